//! `GET /v1/audit`: this process's audit ledger read back — decisions (in `serve`) and admin
//! changes — oldest first, filtered, a page at a time. Each record is returned as written,
//! with its `hash`, so a reader can check it against `portcullis audit verify`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use portcullis_ledger::RecordKind;
use portcullis_ledger::query::AuditQuery;
use portcullis_store::Store;
use serde::Deserialize;

use super::{Page, Params, St, allow, check, hex_encode, page_after, page_size};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

/// Records read at most per call; a page of a rare match may be short and go on.
const SCAN_LIMIT: usize = 200_000;

/// Filters of `GET /v1/audit`; each given one must match.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// `decision`, `admin_change` or `external` (other services' audit events).
    #[serde(default)]
    kind: Option<String>,
    /// The principal, e.g. `User::"alice"`.
    #[serde(default)]
    principal: Option<String>,
    /// The Cedar action, or the admin operation (`assignment.create`).
    #[serde(default)]
    action: Option<String>,
    /// `allow`, `deny`, `shadow_deny` or `refused`.
    #[serde(default)]
    decision: Option<String>,
    /// Who made an admin change (`ops`, `jane (via ops)`, `jwt:carol`).
    #[serde(default)]
    actor: Option<String>,
    /// Records at or after this instant (RFC 3339).
    #[serde(default)]
    since: Option<String>,
    /// Records before this instant (RFC 3339).
    #[serde(default)]
    until: Option<String>,
    /// Records per page, 1 to 1000 (default 100).
    #[serde(default)]
    page_size: Option<usize>,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, description = "Records oldest first, as written (with `hash`). A page may hold fewer than `page_size` records and still have a `next_page_token` when a filter matched little of what one call reads", body = Page<serde_json::Value>), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "This process keeps no audit ledger (`audit.enabled: false`)", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_audit<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<AuditParams>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::AuditRead, &Target::global())?;
    let mut errors = Vec::new();
    let mut field = |name: &str, message: String| {
        errors.push(FieldError {
            field: name.to_owned(),
            message,
        });
    };
    let kind = match params.kind.as_deref() {
        None => None,
        Some("decision") => Some(RecordKind::Decision),
        Some("admin_change") => Some(RecordKind::AdminChange),
        Some("external") => Some(RecordKind::External),
        Some(other) => {
            field(
                "kind",
                format!("`{other}` is not `decision`, `admin_change` or `external`"),
            );
            None
        }
    };
    let mut instant = |name: &str, value: Option<&str>| {
        value.and_then(|v| match v.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => {
                field(name, format!("`{v}` is not an RFC 3339 instant: {e}"));
                None
            }
        })
    };
    let since = instant("since", params.since.as_deref());
    let until = instant("until", params.until.as_deref());
    let size = page_size(params.page_size);
    let after = page_after(params.page_token.as_deref());
    let after_seq = match &after {
        Ok(Some(seq)) => match seq.parse::<u64>() {
            Ok(seq) => seq,
            Err(_) => {
                field("page_token", String::from("not a token this API gave out"));
                0
            }
        },
        _ => 0,
    };
    for problem in [size.as_ref().err(), after.as_ref().err()]
        .into_iter()
        .flatten()
    {
        if let ApiError::Invalid { errors: more, .. } = problem {
            errors.extend(more.iter().cloned());
        }
    }
    check(errors)?;
    let ledger = st.ledger.clone().ok_or_else(|| {
        ApiError::NotFound(String::from(
            "this process keeps no audit ledger (audit.enabled is false)",
        ))
    })?;
    let query = AuditQuery {
        kind,
        principal: params.principal,
        action: params.action,
        decision: params.decision,
        actor: params.actor,
        since,
        until,
        after_seq,
        limit: size?,
        scan_limit: SCAN_LIMIT,
    };
    let page = tokio::task::spawn_blocking(move || ledger.query(&query))
        .await
        .map_err(|e| ApiError::Internal(format!("audit query: {e}")))?
        .map_err(|e| ApiError::Internal(format!("audit query: {e}")))?;
    Ok(Json(Page {
        items: page.records,
        next_page_token: page.next_after_seq.map(|seq| hex_encode(&seq.to_string())),
    })
    .into_response())
}
