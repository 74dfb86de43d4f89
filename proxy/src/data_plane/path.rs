//! Request-target normalisation: done once, before routing, and the result is what the
//! upstream receives — the path that was authorised is the path that is served.
//!
//! - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   encoding is kept, with upper-case hex.
//! - Duplicate slashes collapse; `.` and `..` segments are resolved (RFC 3986 §5.2.4).
//! - Refused (400), because a server behind us could read them differently: anything but an
//!   origin-form target, a fragment, `;` path parameters, an encoded `/` or `\`, a raw `\`,
//!   NUL or other control characters, a malformed `%`, a path that is not UTF-8 once
//!   decoded, and `..` climbing above the root.
//!
//! The query is passed on as received (it is the upstream's to parse), but may not hold a
//! fragment or control characters either.

use std::fmt;

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not `/path[?query]` (absolute-form, authority-form, `*`).
    NotOriginForm,
    /// A `#` fragment.
    Fragment,
    /// A `;` path parameter.
    PathParameter,
    /// `%2F` in the path.
    EncodedSlash,
    /// `\` or `%5C`.
    Backslash,
    /// NUL or another control character, raw or encoded.
    ControlCharacter,
    /// `%` not followed by two hex digits.
    MalformedPercent,
    /// The decoded path is not UTF-8.
    NotUtf8,
    /// `..` above the root.
    AboveRoot,
}

impl PathError {
    /// A short, stable code for responses, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotOriginForm => "target_not_origin_form",
            Self::Fragment => "fragment",
            Self::PathParameter => "path_parameter",
            Self::EncodedSlash => "encoded_slash",
            Self::Backslash => "backslash",
            Self::ControlCharacter => "control_character",
            Self::MalformedPercent => "malformed_percent_encoding",
            Self::NotUtf8 => "path_not_utf8",
            Self::AboveRoot => "path_above_root",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A normalised request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The normalised path, still percent-encoded where needed; what routes match against.
    pub path: String,
    /// The query as received, without the `?`.
    pub query: Option<String>,
}

impl Target {
    /// Path and query as sent upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    let digit =
        |n: u8| char::from_digit(u32::from(n), 16).map_or(b'0', |c| c.to_ascii_uppercase() as u8);
    out.push(b'%');
    out.push(digit(b >> 4));
    out.push(digit(b & 0x0f));
}

/// Normalises a raw request target (`path[?query]`, bytes as received).
pub fn normalize(raw: &[u8]) -> Result<Target, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if raw.contains(&b'#') {
        return Err(PathError::Fragment);
    }
    let (raw_path, raw_query) = match raw.iter().position(|&b| b == b'?') {
        Some(at) => (raw.get(..at).unwrap_or_default(), raw.get(at + 1..)),
        None => (raw, None),
    };

    // Canonical encoding of the path: unreserved bytes literal, the rest `%XX`.
    let mut canonical: Vec<u8> = Vec::with_capacity(raw_path.len());
    let mut decoded: Vec<u8> = Vec::with_capacity(raw_path.len());
    let mut i = 0;
    while let Some(&b) = raw_path.get(i) {
        let byte = if b == b'%' {
            let hi = raw_path.get(i + 1).copied().and_then(hex);
            let lo = raw_path.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::MalformedPercent);
            };
            i += 3;
            let d = hi << 4 | lo;
            match d {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                _ => {}
            }
            if is_unreserved(d) {
                canonical.push(d);
            } else {
                push_encoded(&mut canonical, d);
            }
            d
        } else {
            i += 1;
            match b {
                b'\\' => return Err(PathError::Backslash),
                b';' => return Err(PathError::PathParameter),
                0..=0x20 | 0x7f => return Err(PathError::ControlCharacter),
                b'/' => canonical.push(b'/'),
                _ if b.is_ascii() && b != b'%' => canonical.push(b),
                _ => push_encoded(&mut canonical, b),
            }
            b
        };
        decoded.push(byte);
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::NotUtf8);
    }
    // `canonical` is ASCII by construction.
    let canonical = String::from_utf8(canonical).map_err(|_| PathError::NotUtf8)?;

    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in canonical.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut path = String::with_capacity(canonical.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }

    let query = match raw_query {
        None => None,
        Some(q) => {
            if q.iter().any(|&b| b < 0x20 || b == 0x7f) {
                return Err(PathError::ControlCharacter);
            }
            Some(String::from_utf8(q.to_vec()).map_err(|_| PathError::NotUtf8)?)
        }
    };
    Ok(Target { path, query })
}

/// Decodes a path parameter of a normalised path (`my%20space` → `my space`). `None` if it
/// is not UTF-8 once decoded (cannot happen for output of [`normalize`]).
pub fn decode_param(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex)?;
            let lo = bytes.get(i + 2).copied().and_then(hex)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw.as_bytes()).unwrap().path_and_query()
    }

    fn err(raw: &[u8]) -> PathError {
        normalize(raw).unwrap_err()
    }

    #[test]
    fn normalises_slashes_dots_and_unreserved_encodings() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("/a//b///c"), "/a/b/c");
        assert_eq!(ok("/public/../admin"), "/admin");
        assert_eq!(ok("/a/./b/"), "/a/b/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/a/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/a/.%2E/admin"), "/admin");
        assert_eq!(ok("/%7euser"), "/~user");
        assert_eq!(ok("/my%20space/%c3%a9t%C3%A9"), "/my%20space/%C3%A9t%C3%A9");
        assert_eq!(ok("/x?a=%2F&b=.."), "/x?a=%2F&b=..");
        assert_eq!(ok("/x?q=../../etc"), "/x?q=../../etc");
    }

    #[test]
    fn refuses_what_stays_ambiguous() {
        assert_eq!(err(b"/admin%2F.."), PathError::EncodedSlash);
        assert_eq!(err(b"/admin%2f"), PathError::EncodedSlash);
        assert_eq!(err(b"/admin;x"), PathError::PathParameter);
        assert_eq!(err(b"/admin#x"), PathError::Fragment);
        assert_eq!(err(b"/a\\b"), PathError::Backslash);
        assert_eq!(err(b"/a%5cb"), PathError::Backslash);
        assert_eq!(err(b"/a%00b"), PathError::ControlCharacter);
        assert_eq!(err(b"/a\0b"), PathError::ControlCharacter);
        assert_eq!(err(b"/a%0ab"), PathError::ControlCharacter);
        assert_eq!(err(b"/a%zz"), PathError::MalformedPercent);
        assert_eq!(err(b"/a%4"), PathError::MalformedPercent);
        assert_eq!(err(b"/a%ff"), PathError::NotUtf8);
        assert_eq!(err(b"/a/\xff"), PathError::NotUtf8);
        assert_eq!(err(b"/%2e%2e/admin"), PathError::AboveRoot);
        assert_eq!(err(b"/.."), PathError::AboveRoot);
        assert_eq!(err(b"http://evil/admin"), PathError::NotOriginForm);
        assert_eq!(err(b"*"), PathError::NotOriginForm);
        assert_eq!(err(b""), PathError::NotOriginForm);
    }

    #[test]
    fn raw_utf8_is_encoded_the_same_way_as_its_percent_form() {
        assert_eq!(ok("/é"), ok("/%C3%A9"));
    }

    #[test]
    fn params_decode() {
        assert_eq!(decode_param("my%20space").as_deref(), Some("my space"));
        assert_eq!(decode_param("d1").as_deref(), Some("d1"));
    }
}
