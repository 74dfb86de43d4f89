//! Every response the data plane makes itself, built in one place: what a client sees when
//! Portcullis refuses a request. Bodies are small JSON documents with a stable `error` code;
//! they never carry policy text, keys or internal detail.
//!
//! A gRPC call (`content-type: application/grpc`) gets the same refusals the gRPC way
//! instead: HTTP 200 and, in trailers, `grpc-status` (401 → 16 `UNAUTHENTICATED`, 403 → 7
//! `PERMISSION_DENIED`, 429/413/431 → 8 `RESOURCE_EXHAUSTED`, 400 → 3, 404 → 12, 502/503 → 14,
//! 504 → 4) and `grpc-message` (the reason code), with no message.
//!
//! | status | `error` | when |
//! |---|---|---|
//! | 400 | `bad_request` | the request target, credentials, method or `Host` are ambiguous, or a context attribute the route takes from the request is not of its schema type (`reason` says why) |
//! | 401 | `unauthenticated` | no, bad or revoked credentials; with `WWW-Authenticate: Bearer` |
//! | 403 | `forbidden` | the decision denied (`reason`, `decision_id`), no route matches, or a CORS preflight is not allowed (`cors_refused`) |
//! | 404 | `not_found` | no route matches and `enforcement.unmatched_status` is 404 |
//! | 408 | `request_timeout` | the client stopped sending its body for longer than the route's `client_timeout_ms`; the connection is closed |
//! | 413 | `content_too_large` | the body is over the route's `max_body_bytes` (`body_too_large`) |
//! | 429 | `too_many_requests` | over the route's rate limit (`rate_limited`; with `Retry-After`, `RateLimit` and `RateLimit-Policy`), or a failed authentication from a locked-out address or subject (`locked_out`; with `Retry-After`) |
//! | 431 | `request_header_fields_too_large` | the headers are over the route's `max_header_bytes` (`headers_too_large`) |
//! | 502 | `bad_gateway` | the upstream failed |
//! | 504 | `gateway_timeout` | the upstream was silent past the route's `upstream_timeout_ms` (or the upstream's `read_timeout_ms`) |
//! | 503 | `unavailable` | not ready (no keys loaded yet) or shutting down |

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;

use super::authn::AuthnError;
use super::headers::DECISION_ID;
use super::limits::{Limited, LockedOut, TooLarge};
use super::path::PathError;
use super::screen::RequestError;
use crate::metrics::Outcome;

/// Why the data plane answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// An ambiguous request target.
    BadTarget(PathError),
    /// Something else ambiguous about the request.
    BadRequest(RequestError),
    /// No route matches (403 or 404).
    Unmatched {
        /// 403 or 404.
        status: u16,
    },
    /// No upstream serves this host and path.
    NoUpstream,
    /// No or bad credentials.
    Unauthenticated(AuthnError),
    /// The token's session (`sid`/`jti`) was revoked.
    SessionRevoked,
    /// The decision denied.
    Denied {
        /// The decision id.
        decision_id: String,
        /// Short reason code.
        reason: &'static str,
    },
    /// The decision endpoint was called by a peer that is not a trusted gateway.
    UntrustedGateway,
    /// Not ready to decide.
    Unavailable(&'static str),
    /// Over the route's rate limit.
    RateLimited(Limited),
    /// A failed authentication while its address or subject is locked out.
    LockedOut(LockedOut),
    /// A CORS preflight the route's policy does not allow (or a route without one).
    CorsRefused,
    /// Over the route's request limits.
    TooLarge(TooLarge),
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATE_LIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATE_LIMIT: &str = "ratelimit";

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_id: Option<&'a str>,
}

impl Rejection {
    /// The decision id of a decision's refusal.
    pub fn decision_id(&self) -> Option<&str> {
        match self {
            Self::Denied { decision_id, .. } => Some(decision_id),
            _ => None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadTarget(_) | Self::BadRequest(_) => 400,
            Self::Unmatched { status } => *status,
            Self::NoUpstream => 404,
            Self::Unauthenticated(_) | Self::SessionRevoked => 401,
            Self::Denied { .. } | Self::UntrustedGateway | Self::CorsRefused => 403,
            Self::Unavailable(_) => 503,
            Self::RateLimited(_) | Self::LockedOut(_) => 429,
            Self::TooLarge(what) => what.status(),
        }
    }

    /// The metric outcome.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::BadTarget(_) | Self::BadRequest(_) | Self::TooLarge(_) => Outcome::BadRequest,
            Self::Unmatched { .. } | Self::NoUpstream => Outcome::Unmatched,
            Self::Unauthenticated(_) | Self::SessionRevoked => Outcome::Unauthenticated,
            Self::Denied { .. } | Self::UntrustedGateway | Self::CorsRefused => Outcome::Denied,
            Self::Unavailable(_) => Outcome::Unavailable,
            Self::RateLimited(_) => Outcome::RateLimited,
            Self::LockedOut(_) => Outcome::LockedOut,
        }
    }

    /// The stable reason code, for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadTarget(e) => e.code(),
            Self::BadRequest(e) => e.code(),
            Self::Unmatched { .. } => "no_route",
            Self::NoUpstream => "no_upstream",
            Self::Unauthenticated(e) => e.code(),
            Self::SessionRevoked => "session_revoked",
            Self::Denied { reason, .. } => reason,
            Self::UntrustedGateway => "untrusted_gateway",
            Self::Unavailable(why) => why,
            Self::RateLimited(_) => "rate_limited",
            Self::LockedOut(_) => "locked_out",
            Self::CorsRefused => "cors_refused",
            Self::TooLarge(what) => what.code(),
        }
    }

    fn body(&self) -> Vec<u8> {
        let (error, reason, decision_id) = match self {
            Self::BadTarget(e) => ("bad_request", Some(e.code()), None),
            Self::BadRequest(e) => ("bad_request", Some(e.code()), None),
            Self::Unmatched { status: 404 } | Self::NoUpstream => {
                ("not_found", Some(self.reason()), None)
            }
            Self::Unmatched { .. } => ("forbidden", Some("no_route"), None),
            Self::Unauthenticated(e) => ("unauthenticated", Some(e.code()), None),
            Self::SessionRevoked => ("unauthenticated", Some("session_revoked"), None),
            Self::Denied {
                decision_id,
                reason,
            } => ("forbidden", Some(*reason), Some(decision_id.as_str())),
            Self::UntrustedGateway | Self::CorsRefused => ("forbidden", Some(self.reason()), None),
            Self::TooLarge(TooLarge::Headers) => {
                ("request_header_fields_too_large", Some(self.reason()), None)
            }
            Self::TooLarge(TooLarge::Body) => ("content_too_large", Some(self.reason()), None),
            Self::Unavailable(why) => ("unavailable", Some(*why), None),
            Self::RateLimited(_) | Self::LockedOut(_) => {
                ("too_many_requests", Some(self.reason()), None)
            }
        };
        serde_json::to_vec(&Body {
            error,
            reason,
            decision_id,
        })
        .unwrap_or_default()
    }

    /// The `WWW-Authenticate` value for a 401.
    fn challenge(&self) -> Option<String> {
        let error = match self {
            Self::Unauthenticated(e) => e.bearer_error(),
            Self::SessionRevoked => Some("invalid_token"),
            _ => return None,
        };
        Some(match error {
            None => String::from("Bearer realm=\"portcullis\""),
            Some(error) => format!(
                "Bearer realm=\"portcullis\", error=\"{error}\", error_description=\"{}\"",
                self.reason()
            ),
        })
    }

    /// The response header, with `extra` headers (CORS) added.
    pub fn header(
        &self,
        body_len: usize,
        extra: &[(HeaderName, HeaderValue)],
    ) -> pingora::Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status(), Some(7 + extra.len()))?;
        for (name, value) in extra {
            header.append_header(name.clone(), value.clone())?;
        }
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        header.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
        header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(challenge) = self.challenge() {
            header.insert_header(http::header::WWW_AUTHENTICATE, challenge)?;
        }
        if let Self::Denied { decision_id, .. } = self {
            header.insert_header(DECISION_ID, decision_id.as_str())?;
        }
        match self {
            Self::Unavailable(_) => header.insert_header(http::header::RETRY_AFTER, "1")?,
            Self::RateLimited(limited) => {
                let wait = limited.retry_after_seconds.to_string();
                header.insert_header(http::header::RETRY_AFTER, wait.as_str())?;
                header.insert_header(RATE_LIMIT_POLICY, limited.policy.clone())?;
                header.insert_header(RATE_LIMIT, limited.state.clone())?;
            }
            Self::LockedOut(locked) => {
                let wait = locked.retry_after_seconds.to_string();
                header.insert_header(http::header::RETRY_AFTER, wait.as_str())?;
            }
            _ => {}
        }
        Ok(header)
    }

    /// Writes the response, with `extra` headers (CORS). The connection is not reused when
    /// the request may carry a body that was not read.
    pub async fn send(
        &self,
        session: &mut Session,
        extra: &[(HeaderName, HeaderValue)],
    ) -> pingora::Result<()> {
        let body = self.body();
        let header = self.header(body.len(), extra)?;
        if is_grpc(&session.req_header().headers) {
            return send_grpc(session, header, self.reason()).await;
        }
        let headers = &session.req_header().headers;
        let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `+proto`, ...): what
/// Portcullis answers it itself is answered the gRPC way.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status code for an HTTP status Portcullis answers with.
pub fn grpc_status(http_status: u16) -> &'static str {
    match http_status {
        400 => "3",             // INVALID_ARGUMENT
        408 => "4",             // DEADLINE_EXCEEDED
        401 => "16",            // UNAUTHENTICATED
        403 => "7",             // PERMISSION_DENIED
        404 => "12",            // UNIMPLEMENTED: no such method here
        413 | 429 | 431 => "8", // RESOURCE_EXHAUSTED
        502 | 503 => "14",      // UNAVAILABLE
        504 => "4",             // DEADLINE_EXCEEDED
        _ => "13",              // INTERNAL
    }
}

/// Sends an answer's `header` the gRPC way: HTTP 200, `application/grpc`, and the status in
/// `grpc-status` / `grpc-message` (`message`, a short code), with no message. Over HTTP/2
/// the status goes in trailers that end the stream, as a gRPC server's own would; over
/// HTTP/1.1 (no gRPC client speaks it, a probe might) in the headers. The other headers
/// stay (`Retry-After`, `WWW-Authenticate`, the decision id).
pub async fn send_grpc(
    session: &mut Session,
    mut header: ResponseHeader,
    message: &'static str,
) -> pingora::Result<()> {
    let status = grpc_status(header.status.as_u16());
    header.set_status(200)?;
    header.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    header.remove_header(&http::header::CONTENT_LENGTH);
    if session.is_http2() {
        session
            .write_response_header(Box::new(header), false)
            .await?;
        let mut trailers = http::HeaderMap::with_capacity(2);
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        trailers.insert("grpc-message", HeaderValue::from_static(message));
        return session.write_response_trailers(trailers).await;
    }
    header.insert_header("grpc-status", status)?;
    header.insert_header("grpc-message", message)?;
    header.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(Bytes::new()), true).await
}

/// What the data plane answers when forwarding fails (`fail_to_proxy`), by status: the
/// reason code (a gRPC call's `grpc-message`) and the JSON body.
pub fn forwarding_failure(status: u16) -> (&'static str, &'static [u8]) {
    match status {
        // The client stopped sending its body past the route's `client_timeout_ms`.
        408 => ("request_timeout", br#"{"error":"request_timeout"}"#),
        // A streamed body grew past the route's `max_body_bytes`.
        413 => (
            "body_too_large",
            br#"{"error":"content_too_large","reason":"body_too_large"}"#,
        ),
        502 => ("bad_gateway", br#"{"error":"bad_gateway"}"#),
        // The upstream was silent past its timeout.
        504 => ("gateway_timeout", br#"{"error":"gateway_timeout"}"#),
        _ => ("internal", br#"{"error":"internal"}"#),
    }
}
