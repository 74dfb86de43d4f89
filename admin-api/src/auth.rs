//! Admin authentication: bearer tokens, stored only as SHA-256 hashes. No anonymous call
//! reaches a handler; the token's subject is the actor recorded for every change.
//!
//! The token file has one token per line: `<subject> sha256:<hex of SHA-256(token)>`;
//! blank lines and `#` comments are skipped.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The accepted admin tokens.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    hashes: Arc<Vec<([u8; 32], String)>>,
}

/// Who called: the token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect()
}

/// The line for a token file.
pub fn token_line(subject: &str, token: &str) -> String {
    format!(
        "{subject} sha256:{}",
        hex(&Sha256::digest(token.as_bytes()))
    )
}

impl AdminTokens {
    /// Parses a token file; every bad line is reported as `line N: message`.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let mut hashes = Vec::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line.split_once(' ').and_then(|(subject, hash)| {
                let hex = hash.trim().strip_prefix("sha256:")?;
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
                    .collect::<Option<_>>()?;
                Some((<[u8; 32]>::try_from(bytes).ok()?, subject.to_owned()))
            });
            match parsed {
                Some(entry) => hashes.push(entry),
                None => problems.push(format!(
                    "line {}: expected `<subject> sha256:<64 hex digits>`",
                    i + 1
                )),
            }
        }
        if problems.is_empty() {
            Ok(Self {
                hashes: Arc::new(hashes),
            })
        } else {
            Err(problems)
        }
    }

    /// The subject of a presented token.
    pub fn subject(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.hashes
            .iter()
            .find(|(hash, _)| constant_time_eq(hash, &digest))
            .map(|(_, subject)| subject.as_str())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: refuses calls without a valid admin token (401 problem+json) and puts the
/// [`Actor`] into the request.
pub async fn require_admin(
    State(tokens): State<AdminTokens>,
    mut request: Request,
    next: Next,
) -> Response {
    let subject = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .and_then(|token| tokens.subject(token))
        .map(str::to_owned);
    match subject {
        Some(subject) => {
            request.extensions_mut().insert(Actor(subject));
            next.run(request).await
        }
        None => ApiError::Unauthenticated.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let file = format!("# admins\n{}\n", token_line("ops", "s3cret"));
        let tokens = AdminTokens::parse(&file).unwrap();
        assert_eq!(tokens.subject("s3cret"), Some("ops"));
        assert_eq!(tokens.subject("s3cre"), None);
        assert!(!file.contains("s3cret\n") && !file.ends_with("s3cret"));
        assert_eq!(
            AdminTokens::parse("ops plain\n").unwrap_err(),
            ["line 1: expected `<subject> sha256:<64 hex digits>`"]
        );
    }
}
