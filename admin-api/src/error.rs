//! Every error of the admin API becomes an RFC 9457 `application/problem+json` response in
//! one place ([`ApiError::into_response`]): `type`, `title`, `status`, `detail`, and
//! `errors: [{field, message}]` listing every failing field at once. Client mistakes are not
//! logged as errors; internal detail never reaches the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// One failing field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field (`role`, `scope.entity`, `files[0]`), or `body`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, fixed summary of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// This occurrence.
    pub detail: String,
    /// Every failing field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An admin API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request is malformed or fails validation; every field listed.
    Invalid {
        /// What was wrong overall.
        detail: String,
        /// Each failing field.
        errors: Vec<FieldError>,
    },
    /// 401: no or bad credentials.
    Unauthenticated,
    /// 429: too many failed authentications from this client; retry after this many
    /// seconds.
    TooManyFailures(u64),
    /// 403: the admin policies do not allow this caller this call.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409: conflicts with what is stored (or with a request still running).
    Conflict(String),
    /// 422: understood, but not processable as sent (an idempotency key reused with
    /// another body).
    Unprocessable(String),
    /// 412: `If-Match` names another version than the current one.
    PreconditionFailed(String),
    /// 428: a write of a versioned resource without `If-Match`.
    PreconditionRequired(String),
    /// 500: something failed inside (detail logged, not returned).
    Internal(String),
    /// 503: a change the audit ledger cannot record is not made (detail logged).
    LedgerUnavailable(String),
}

impl ApiError {
    /// A validation error on one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            detail: String::from("the request is invalid"),
            errors: vec![FieldError {
                field: field.to_owned(),
                message: message.into(),
            }],
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Conflict(what) => Self::Conflict(what),
            StoreError::Invalid(m) => Self::field("body", m.to_string()),
            StoreError::Policy(c) => Self::Invalid {
                detail: String::from("the policies would not compile"),
                errors: c
                    .0
                    .iter()
                    .map(|d| FieldError {
                        field: d.file.clone(),
                        message: d.to_string(),
                    })
                    .collect(),
            },
            e @ StoreError::VersionMismatch { .. } => Self::PreconditionFailed(e.to_string()),
            StoreError::Database(e) => Self::Internal(format!("database: {e}")),
            StoreError::Corrupt(e) => Self::Internal(format!("corrupt data: {e}")),
            e @ (StoreError::Migration(_) | StoreError::NewerStore(_)) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            Self::TooManyFailures(seconds) => Some(*seconds),
            Self::LedgerUnavailable(_) => Some(1),
            _ => None,
        };
        let (status, kind, title, detail, errors) = match self {
            Self::Invalid { detail, errors } => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "The request is invalid",
                detail,
                errors,
            ),
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication is required",
                String::from("send `Authorization: Bearer <admin token>`"),
                Vec::new(),
            ),
            Self::TooManyFailures(retry_after) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-failed-authentications",
                "Too many failed authentications",
                format!(
                    "this client sent too many bad admin credentials; retry in {retry_after} s"
                ),
                Vec::new(),
            ),
            Self::Forbidden(detail) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "The admin policies do not allow this",
                detail,
                Vec::new(),
            ),
            Self::NotFound(detail) => (
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                detail,
                Vec::new(),
            ),
            Self::Conflict(detail) => (
                StatusCode::CONFLICT,
                "conflict",
                "Conflict with the stored state",
                detail,
                Vec::new(),
            ),
            Self::Unprocessable(detail) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "The request cannot be processed as sent",
                detail,
                Vec::new(),
            ),
            Self::PreconditionFailed(detail) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "The resource changed since you read it",
                detail,
                Vec::new(),
            ),
            Self::PreconditionRequired(detail) => (
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "This write needs If-Match",
                detail,
                Vec::new(),
            ),
            Self::LedgerUnavailable(detail) => {
                tracing::error!(
                    detail,
                    "admin change refused: the audit ledger cannot record it"
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ledger-unavailable",
                    "The change cannot be recorded",
                    String::from(
                        "the audit ledger cannot record this change, so it was not made; retry later",
                    ),
                    Vec::new(),
                )
            }
            Self::Internal(detail) => {
                tracing::error!(detail, "admin API internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    String::from("the request could not be completed; see the server log"),
                    Vec::new(),
                )
            }
        };
        let problem = Problem {
            kind: format!("https://portcullis.dev/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
        }
        response
    }
}
