//! Lifecycle events over HTTP: `POST /v1/events` (one event, or a batch as a JSON array),
//! the dead letters, their replay, and the live stream consoles follow
//! (`GET /v1/events/stream`). Every event goes through the one ingestion path
//! (`portcullis_events::Ingest`) the queue consumers use.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_events::{Outcome, Receipt, Unavailable};
use portcullis_model::events::{DeadLetter, StreamEntry};
use portcullis_store::Store;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Page, PageQuery, Params, St, allow, page_after, page_of, page_size};
use crate::AppState;
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

/// How many entries a console behind what the stream keeps in memory reads at a time.
const CATCH_UP_BATCH: i64 = 500;

#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last entry the console saw: the stream resumes right after it. Without it, the stream starts with what is taken from now on")),
    responses(
        (status = 200, description = "Server-sent events until the caller leaves, one per event taken (duplicates excepted) or kept as a dead letter, in the order they were committed (by every replica sharing the store). `id`: the entry's number, for `Last-Event-ID`. Event name: the event's type (`USER_CREATED`, `user.deactivated`) when it was applied or acknowledged; `stale` when a newer event had been applied to its subject; `dead_letter` when it could not be applied. Data (JSON): `event_id`, `event_type`, `source`, `occurred_at`, `outcome`, `revision` (applied), `subjects`, `data` (the event's payload); for `dead_letter`: `dead_letter`, `event_id`, `source`, `received_at`, `reason`. `resync` (data: `last_event_id`, `resumed_after`) when entries after `Last-Event-ID` are no longer kept (the store keeps the last 100,000) or the id is ahead of the stream: reload what the console shows. Comments keep the connection alive", content_type = "text/event-stream"),
        (status = 400, description = "`Last-Event-ID` is not a number this stream gave", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn stream_events<S: Store + Clone + Send + Sync + 'static>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::EventsRead, &Target::global())?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::field(
                        "Last-Event-ID",
                        "must be the `id` of an entry of this stream (a whole number)",
                    )
                })?,
        ),
    };
    let head = st.store.event_stream_head().await?;
    let mut pending = VecDeque::new();
    let cursor = match last {
        None => head,
        Some(n) if n > head => {
            // Ahead of the stream: the store was replaced; start over from its head.
            pending.push_back(resync(n, head));
            head
        }
        Some(n) => n,
    };
    let follower = Follower {
        published: st.events.stream().subscribe(),
        st,
        cursor,
        pending,
    };
    let events = futures_util::stream::unfold(follower, |mut f| async move {
        let event = f.next_event().await?;
        Some((Ok::<_, std::convert::Infallible>(event), f))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One console's place in the stream.
struct Follower<S> {
    st: Arc<AppState<S>>,
    /// The number of the newest entry the stream holds.
    published: tokio::sync::watch::Receiver<i64>,
    /// The number of the last entry sent.
    cursor: i64,
    pending: VecDeque<Event>,
}

impl<S: Store> Follower<S> {
    /// The next event; `None` ends the stream (the console reconnects with its last id).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let published = *self.published.borrow_and_update();
            if published > self.cursor {
                let entries = match self.st.events.stream().after(self.cursor) {
                    Some(kept) => kept,
                    None => match self
                        .st
                        .store
                        .event_stream(self.cursor, CATCH_UP_BATCH)
                        .await
                    {
                        Ok(read) => read.into_iter().map(Arc::new).collect(),
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: cannot read the store; closing");
                            return None;
                        }
                    },
                };
                if let Some(first) = entries.first()
                    && first.seq > self.cursor + 1
                {
                    self.pending.push_back(resync(self.cursor, first.seq - 1));
                }
                for entry in entries {
                    self.cursor = entry.seq;
                    self.pending.push_back(event_of(&entry));
                }
                if !self.pending.is_empty() {
                    continue;
                }
            }
            tokio::select! {
                changed = self.published.changed() => if changed.is_err() { return None },
                // The console reconnects, to another replica or after the restart.
                () = self.st.stopping.cancelled() => return None,
            }
        }
    }
}

fn event_of(entry: &StreamEntry) -> Event {
    Event::default()
        .event(&entry.name)
        .id(entry.seq.to_string())
        .data(&entry.data)
}

/// Entries after `last` are not there: the console reloads, then follows from `resumed`.
fn resync(last: i64, resumed: i64) -> Event {
    Event::default()
        .event("resync")
        .id(resumed.to_string())
        .data(serde_json::json!({"last_event_id": last, "resumed_after": resumed}).to_string())
}
