//! `${VAR}` and `${VAR:default}` in the configuration text; `$$` is a literal `$`. YAML
//! comments are left as they are.

/// Replaces every `${VAR}` / `${VAR:default}` outside comments using `lookup`. A variable
/// that is unset and has no default is an error naming its line: `(line, message)`.
pub(super) fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let (content, comment) = line.split_at(comment_start(line));
        out.push_str(&interpolate_line(content, i + 1, &lookup)?);
        out.push_str(comment);
    }
    Ok(out)
}

/// Where a YAML comment starts in `line` (`#` at the start or after a space, outside
/// quotes), or its length.
fn comment_start(line: &str) -> usize {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return at,
            None => {}
        }
        previous = c;
    }
    line.len()
}

fn interpolate_line(
    text: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let (before, from_dollar) = rest.split_at(at);
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
    fn comments_are_left_alone() {
        assert_eq!(
            interpolate("# ${NOPE}\na: ${PORT} # ${NOPE}\nb: \"x # ${PORT}\"\n", env).unwrap(),
            "# ${NOPE}\na: 9000 # ${NOPE}\nb: \"x # 9000\"\n"
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
