//! `${VAR}` and `${VAR:default}` in the configuration text; `$$` is a literal `$`.

/// Replaces every `${VAR}` / `${VAR:default}` using `lookup`. A variable that is unset and
/// has no default is an error naming its line: `(line, message)`.
pub(super) fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    while let Some(at) = rest.find('$') {
        let (before, from_dollar) = rest.split_at(at);
        line += before.matches('\n').count();
        out.push_str(before);
        if let Some(after) = from_dollar.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body_start) = from_dollar.strip_prefix("${") else {
            out.push('$');
            rest = from_dollar.get(1..).unwrap_or_default();
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err((line, String::from("`${` is not closed by `}`")));
        };
        let (body, after) = body_start.split_at(end);
        let (name, default) = match body.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((line, format!("`${{{body}}}` does not name a variable")));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err((
                    line,
                    format!("environment variable `{name}` is not set and has no default"),
                ));
            }
        }
        rest = after.get(1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| String::from("9000"))
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(
            interpolate("a: ${PORT}\nb: ${HOST:localhost}\nc: $$x\nd: $y", env).unwrap(),
            "a: 9000\nb: localhost\nc: $x\nd: $y"
        );
    }

    #[test]
    fn a_missing_variable_names_its_line() {
        let (line, message) = interpolate("a: 1\nb: 2\nc: ${NOPE}\n", env).unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("`NOPE`"), "{message}");
        assert_eq!(interpolate("x: ${OPEN", env).unwrap_err().0, 1);
    }
}
