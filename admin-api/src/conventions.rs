//! API conventions our users know from elsewhere (seed 003):
//!
//! - `X-Request-Id`: echoed when the caller sends a sane one, made (UUIDv7) otherwise, on
//!   every response, and logged with the request.
//! - `Idempotency-Key` on a `POST`: the first response is kept (24 hours) under the key,
//!   the caller and the method and path; a replay with the same body gets that response
//!   again (with `Idempotency-Replayed: true`); the same key with another body is 422; a
//!   replay while the first is still running is 409. Kept in this process's memory: one
//!   control plane at a time.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::Actor;
use crate::error::ApiError;

/// `X-Request-Id`.
pub const REQUEST_ID: &str = "x-request-id";
/// `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: echoes or makes the request id.
pub async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| sane(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let span = tracing::info_span!("admin", request_id = id.as_str());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[derive(Debug, Clone)]
enum Kept {
    /// The first request is still running.
    Running,
    /// Its response.
    Done {
        body: [u8; 32],
        status: StatusCode,
        content_type: Option<HeaderValue>,
        response: Bytes,
    },
}

/// Responses kept under idempotency keys.
#[derive(Debug, Clone)]
pub struct Idempotency {
    kept: moka::sync::Cache<String, Kept>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            kept: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
        }
    }
}

/// Largest body an idempotent request may have.
const MAX_BODY: usize = 1 << 20;

/// Middleware: replays responses of `POST`s that carry an `Idempotency-Key`.
pub async fn idempotency(
    State(store): State<Idempotency>,
    request: Request,
    next: Next,
) -> Response {
    let key = request
        .headers()
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(key), true) = (key, request.method() == Method::POST) else {
        return next.run(request).await;
    };
    if !sane(&key) {
        return ApiError::field("Idempotency-Key", "1 to 128 printable characters").into_response();
    }
    let actor = request
        .extensions()
        .get::<Actor>()
        .map_or_else(String::new, |a| a.identity.subject.clone());
    let scoped = format!("{actor}\n{}\n{key}", request.uri().path());
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::field("body", "larger than 1 MiB").into_response();
    };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();

    let entry = store
        .kept
        .entry(scoped.clone())
        .or_insert_with(|| Kept::Running);
    if !entry.is_fresh() {
        return match entry.into_value() {
            Kept::Running => ApiError::Conflict(String::from(
                "a request with this Idempotency-Key is still running",
            ))
            .into_response(),
            Kept::Done { body, .. } if body != digest => ApiError::Unprocessable(String::from(
                "this Idempotency-Key was used with another body",
            ))
            .into_response(),
            Kept::Done {
                status,
                content_type,
                response,
                ..
            } => {
                let mut replay = (status, response).into_response();
                if let Some(ct) = content_type {
                    replay
                        .headers_mut()
                        .insert(axum::http::header::CONTENT_TYPE, ct);
                }
                replay
                    .headers_mut()
                    .insert("idempotency-replayed", HeaderValue::from_static("true"));
                replay
            }
        };
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let Ok(response_bytes) = axum::body::to_bytes(body, MAX_BODY * 4).await else {
        store.kept.invalidate(&scoped);
        return ApiError::Internal(String::from("response too large to keep")).into_response();
    };
    if parts.status.is_server_error() {
        // A failure inside is not a result to replay: the caller may retry.
        store.kept.invalidate(&scoped);
    } else {
        store.kept.insert(
            scoped,
            Kept::Done {
                body: digest,
                status: parts.status,
                content_type: parts.headers.get(axum::http::header::CONTENT_TYPE).cloned(),
                response: response_bytes.clone(),
            },
        );
    }
    Response::from_parts(parts, Body::from(response_bytes))
}
