//! Admin authentication: bearer tokens, stored only as SHA-256 hashes ([`AdminTokens`]),
//! and, when configured, JWTs from the data plane's issuer ([`JwtVerifier`]). No anonymous
//! call reaches a handler; failed authentications are counted
//! (`portcullis_admin_auth_failures_total`) and throttled per client address
//! ([`throttle`]). What an authenticated caller may do is decided per call by
//! [`crate::authz`].
//!
//! The token file has one token per line:
//! `<subject> sha256:<hex of SHA-256(token)> [roles=<role>,...] [tenant=<tenant>]`; blank
//! lines and `#` comments are skipped. A line without `roles=` is a `platform-admin`.
//!
//! The actor recorded for a change is the token's subject, or `<X-Actor-Id> (via
//! <subject>)` when automation acting for someone names them.

pub mod throttle;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use portcullis_ledger::hex::sha256_hex;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use throttle::{FailureLimit, Throttle};

/// The accepted admin tokens.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    hashes: Arc<Vec<([u8; 32], Identity)>>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject (`ops`, `ci-deployer`, `t1-admin`).
    pub subject: String,
    /// Roles the admin policies know (`platform-admin`, `tenant-admin`, `sidecar`, ...).
    pub roles: Vec<String>,
    /// The tenant a tenant-scoped admin manages.
    pub tenant: Option<String>,
}

/// The role of a token line without `roles=`.
pub const DEFAULT_ROLE: &str = "platform-admin";

/// Who called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's identity: what authorisation decides on.
    pub identity: Identity,
    /// `X-Actor-Id`: the person automation acts for, recorded beside the subject.
    pub on_behalf_of: Option<String>,
}

impl Actor {
    /// The name recorded with a change.
    pub fn recorded(&self) -> String {
        match &self.on_behalf_of {
            Some(person) => format!("{person} (via {})", self.identity.subject),
            None => self.identity.subject.clone(),
        }
    }
}

/// Parses `<subject> sha256:<hex> [roles=a,b] [tenant=t]`.
fn parse_line(line: &str) -> Result<([u8; 32], Identity), String> {
    let mut words = line.split_whitespace();
    let subject = words.next().unwrap_or_default();
    let hash = words
        .next()
        .and_then(|h| h.strip_prefix("sha256:"))
        .and_then(portcullis_ledger::hex::decode)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| String::from("expected `<subject> sha256:<64 hex digits>`"))?;
    let mut identity = Identity {
        subject: subject.to_owned(),
        roles: vec![String::from(DEFAULT_ROLE)],
        tenant: None,
    };
    for word in words {
        match word.split_once('=') {
            Some(("roles", roles)) => {
                identity.roles = roles
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            Some(("tenant", tenant)) if !tenant.is_empty() => {
                identity.tenant = Some(tenant.to_owned());
            }
            _ => {
                return Err(format!(
                    "`{word}`: expected `roles=<role>,...` or `tenant=<tenant>`"
                ));
            }
        }
    }
    Ok((hash, identity))
}

/// The line for a token file.
pub fn token_line(subject: &str, token: &str) -> String {
    format!("{subject} sha256:{}", sha256_hex(token.as_bytes()))
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
            match parse_line(line) {
                Ok(entry) => hashes.push(entry),
                Err(message) => problems.push(format!("line {}: {message}", i + 1)),
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

    /// The identity of a presented token.
    pub fn identify(&self, token: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.hashes
            .iter()
            .find(|(hash, _)| constant_time_eq(hash, &digest))
            .map(|(_, identity)| identity)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies admin JWTs: the process's issuer and keys, an admin audience, and claims that
/// name the admin roles (and tenant). Implemented where the keys live (the proxy crate).
pub trait JwtVerifier: Send + Sync + std::fmt::Debug {
    /// The identity a token proves, or why it proves none.
    fn identify(&self, token: &str) -> Result<Identity, String>;
}

/// How admin calls are authenticated: the token file, optional JWTs, and the throttle of
/// failures.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// Swapped whole when the token file changes ([`AdminAuth::tokens`]).
    tokens: Arc<ArcSwap<AdminTokens>>,
    jwt: Option<Arc<dyn JwtVerifier>>,
    throttle: Arc<Throttle>,
    /// `portcullis_admin_auth_failures_total{reason}`.
    failures: prometheus::IntCounterVec,
}

impl AdminAuth {
    /// Bearer tokens from a token file only, with the default failure limit; failures are
    /// counted in a counter of its own until [`AdminAuth::counting_failures_in`].
    pub fn new(tokens: AdminTokens) -> Self {
        Self {
            tokens: Arc::new(ArcSwap::from_pointee(tokens)),
            jwt: None,
            throttle: Arc::new(Throttle::new(FailureLimit::default())),
            failures: failure_counter(),
        }
    }

    /// Counts failed authentications in `failures` (labelled `reason`), a counter the
    /// caller serves; made by [`failure_counter`].
    #[must_use]
    pub fn counting_failures_in(mut self, failures: prometheus::IntCounterVec) -> Self {
        self.failures = failures;
        self
    }

    /// Also accepts JWTs that `verifier` accepts.
    #[must_use]
    pub fn with_jwt(mut self, verifier: Arc<dyn JwtVerifier>) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// Throttles failures with `limit` instead of the default.
    #[must_use]
    pub fn with_failure_limit(mut self, limit: FailureLimit) -> Self {
        self.throttle = Arc::new(Throttle::new(limit));
        self
    }

    /// The accepted tokens: storing a new set there rotates them for the next call, without
    /// a restart.
    pub fn tokens(&self) -> Arc<ArcSwap<AdminTokens>> {
        Arc::clone(&self.tokens)
    }

    /// The identity of a presented bearer credential: a listed token, else a JWT.
    fn identify(&self, credential: &str) -> Result<Identity, String> {
        if let Some(identity) = self.tokens.load().identify(credential) {
            return Ok(identity.clone());
        }
        match &self.jwt {
            Some(jwt) if credential.matches('.').count() == 2 => jwt.identify(credential),
            _ => Err(String::from("not a known admin token")),
        }
    }
}

/// `portcullis_admin_auth_failures_total`: failed authentications by reason (`missing`,
/// `invalid`, `throttled`), every series present from the start. Unregistered: the caller
/// registers it where its metrics are served.
#[expect(
    clippy::panic,
    reason = "a static metric definition; a failure is a bug the API tests catch"
)]
pub fn failure_counter() -> prometheus::IntCounterVec {
    let counter = match prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "portcullis_admin_auth_failures_total",
            "Admin API calls refused for missing or bad credentials, or throttled after too many",
        ),
        &["reason"],
    ) {
        Ok(counter) => counter,
        Err(e) => panic!("invalid static metric definition: {e}"),
    };
    for reason in ["missing", "invalid", "throttled"] {
        counter.with_label_values(&[reason]);
    }
    counter
}

/// Middleware: refuses calls without valid admin credentials (401 problem+json, or 429 from
/// an address over its failure limit), and puts the [`Actor`] into the request.
pub async fn require_admin(
    State(auth): State<AdminAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let now = Instant::now();
    let on_behalf_of = match request.headers().get("x-actor-id") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(v) if !v.trim().is_empty() && v.len() <= 256 => Some(v.trim().to_owned()),
            _ => {
                return ApiError::field("X-Actor-Id", "must be 1 to 256 visible ASCII characters")
                    .into_response();
            }
        },
    };
    let credential = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|token| !token.is_empty());
    // A credential that verifies always passes: the throttle refuses only failures, so
    // someone else's bad guesses from a shared address (a NAT, a node) never lock out a
    // valid token. Past the limit a failure is answered 429 instead of 401.
    let refusal = match credential.map(|c| auth.identify(c)) {
        Some(Ok(identity)) => {
            request.extensions_mut().insert(Actor {
                identity,
                on_behalf_of,
            });
            return next.run(request).await;
        }
        Some(Err(reason)) => {
            tracing::info!(client = %client, reason, "admin call with bad credentials refused");
            "invalid"
        }
        None => "missing",
    };
    if let Some(retry_after) = auth.throttle.refused(client, now) {
        auth.failures.with_label_values(&["throttled"]).inc();
        return ApiError::TooManyFailures(retry_after).into_response();
    }
    auth.failures.with_label_values(&[refusal]).inc();
    auth.throttle.failed(client, now);
    ApiError::Unauthenticated.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let file = format!("# admins\n{}\n", token_line("ops", "s3cret"));
        let file = format!(
            "{file}{} roles=tenant-admin,auditor tenant=t1\n",
            token_line("t1-admin", "other")
        );
        let tokens = AdminTokens::parse(&file).unwrap();
        let ops = tokens.identify("s3cret").unwrap();
        assert_eq!(
            (ops.subject.as_str(), ops.roles.as_slice()),
            ("ops", &[String::from("platform-admin")][..])
        );
        assert_eq!(tokens.identify("s3cre"), None);
        let t1 = tokens.identify("other").unwrap();
        assert_eq!(t1.roles, ["tenant-admin", "auditor"]);
        assert_eq!(t1.tenant.as_deref(), Some("t1"));
        assert!(!file.contains("s3cret\n") && !file.ends_with("s3cret"));
        let bad = format!("ops plain\n{} role=x\n", token_line("a", "b"));
        assert_eq!(
            AdminTokens::parse(&bad).unwrap_err(),
            [
                "line 1: expected `<subject> sha256:<64 hex digits>`",
                "line 2: `role=x`: expected `roles=<role>,...` or `tenant=<tenant>`"
            ]
        );
    }
}
