//! Placing diagnostics in source text: byte offsets → line and column, miette labels →
//! offsets, and where each policy statement starts.

use super::PolicyDiagnostic;

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The offset of the first labelled span of a diagnostic, if it has one.
pub(super) fn first_label(diag: &dyn miette::Diagnostic) -> Option<usize> {
    diag.labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
}

/// The message of a diagnostic with its help text, in one line.
pub(super) fn message_of(diag: &dyn miette::Diagnostic) -> String {
    let mut message = diag.to_string();
    if let Some(help) = diag.help() {
        message.push_str("; ");
        message.push_str(&help.to_string());
    }
    message
}

/// A diagnostic placed in `text` (from its first label; 1:1 when it has none).
pub(super) fn diagnostic_at(
    file: &str,
    text: &str,
    diag: &dyn miette::Diagnostic,
) -> PolicyDiagnostic {
    let (line, column) = line_col(text, first_label(diag).unwrap_or(0));
    PolicyDiagnostic {
        file: file.to_owned(),
        line,
        column,
        message: message_of(diag),
    }
}

/// Byte offsets where each top-level statement (policy or template, annotations included)
/// begins, in source order. Skips comments and string literals; statements end at `;`.
pub(super) fn statement_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut in_statement = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '/' if matches!(chars.peek(), Some((_, '/'))) => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                if !in_statement {
                    in_statement = true;
                    starts.push(i);
                }
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            ';' => in_statement = false,
            c if c.is_whitespace() => {}
            _ => {
                if !in_statement {
                    in_statement = true;
                    starts.push(i);
                }
            }
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "ab\ncd\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (2, 2));
    }

    #[test]
    fn statement_starts_skip_comments_and_strings() {
        let text = "// c; x\n@id(\"a;b\")\npermit(principal, action, resource);\n\n  forbid(principal, action, resource) when { \"x;\" == \"y\" };";
        let starts = statement_starts(text);
        assert_eq!(starts.len(), 2);
        assert_eq!(line_col(text, starts[0]), (2, 1));
        assert_eq!(line_col(text, starts[1]), (5, 3));
    }
}
