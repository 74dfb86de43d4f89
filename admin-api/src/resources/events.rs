//! Lifecycle events over HTTP: `POST /v1/events` (one event, or a batch as a JSON array),
//! the dead letters, and their replay. Every event goes through the one ingestion path
//! (`portcullis_events::Ingest`) the queue consumers use.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_events::{Outcome, Receipt, Unavailable};
use portcullis_model::events::DeadLetter;
use portcullis_store::Store;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Page, PageQuery, Params, St, allow, page_after, page_of, page_size};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, Problem};

/// The most events one batch may carry.
const MAX_BATCH: usize = 500;

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        match e {
            Unavailable::Store(e) => e.into(),
            Unavailable::Ledger(detail) => Self::LedgerUnavailable(detail),
        }
    }
}

/// What became of each event of a batch, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchReceipt {
    /// One receipt per event: `outcome` is `applied` (with `revision`), `acknowledged`,
    /// `duplicate`, `stale` or `dead_lettered` (with `dead_letter` and `reason`).
    #[schema(value_type = Vec<Object>)]
    results: Vec<Receipt>,
}

#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = Object, description = "One event in a seed envelope (000 `topic`, 001 `type`, 004 `event_type`, or an SNS notification of one), or a JSON array of up to 500"),
    responses((status = 200, description = "Taken: `outcome` is `applied` (with `revision`), `acknowledged`, `duplicate` or `stale`; for a batch, `results` holds one receipt per event, dead letters included", body = Object), (status = 400, description = "A batch that is not a JSON array of at most 500", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 422, description = "The event cannot be applied; it is kept as a dead letter (named in `detail`)", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The audit ledger cannot record it: not taken, retry", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn post_events<S: Store + Clone>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::EventsPublish, &Target::global())?;
    let source = format!("http:{}", actor.recorded());
    let batch = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if !batch {
        let receipt = st.events.take(&source, &body).await?;
        return match &receipt.outcome {
            Outcome::DeadLettered {
                dead_letter,
                reason,
            } => Err(ApiError::Unprocessable(format!(
                "{reason} (kept as dead letter `{dead_letter}`)"
            ))),
            Outcome::Taken(_) => Ok(Json(receipt).into_response()),
        };
    }
    // Each event's bytes as sent: a signature covers them.
    let events: Vec<&RawValue> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::field("body", format!("not a JSON array of events: {e}")))?;
    if events.len() > MAX_BATCH {
        return Err(ApiError::field(
            "body",
            format!("{} events; a batch holds at most {MAX_BATCH}", events.len()),
        ));
    }
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        results.push(st.events.take(&source, event.get().as_bytes()).await?);
    }
    Ok(Json(BatchReceipt { results }).into_response())
}

#[utoipa::path(get, path = "/v1/events/dead-letters", tag = "events", params(PageQuery),
    responses((status = 200, description = "Events that could not be applied, oldest first, with the reason and the message as received", body = Page<DeadLetter>), (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_dead_letters<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<PageQuery>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::EventsRead, &Target::global())?;
    let size = page_size(query.page_size)?;
    let after = page_after(query.page_token.as_deref())?;
    let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
    let letters = st.store.dead_letters(after.as_deref(), limit).await?;
    Ok(Json(page_of(letters, size, |d| d.id.clone())).into_response())
}

#[utoipa::path(post, path = "/v1/events/dead-letters/{id}/replay", tag = "events",
    params(("id" = String, Path, description = "Dead letter id")),
    responses((status = 200, description = "Taken now (marked replayed), or a duplicate of one taken since", body = Object), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Still cannot be applied: the reason", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn replay_dead_letter<S: Store + Clone>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::EventsReplay, &Target::global())?;
    let receipt = st
        .events
        .replay(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("dead letter `{id}` not found")))?;
    match &receipt.outcome {
        Outcome::DeadLettered { reason, .. } => Err(ApiError::Unprocessable(format!(
            "still not applicable: {reason}"
        ))),
        Outcome::Taken(_) => Ok(Json(receipt).into_response()),
    }
}
