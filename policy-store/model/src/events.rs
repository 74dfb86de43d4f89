//! Lifecycle events as the store keeps them: which were taken (and with what outcome), and
//! which could not be applied (dead letters). What an event means is decided elsewhere
//! (`portcullis-events`); here is only what is recorded.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// An event about to be taken: enough to recognise it again and to order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The producer's id for it: the same id again is a duplicate.
    pub id: String,
    /// Where it came from (`http`, `sqs:<queue>`, `redis:<stream>`) and who produced it.
    pub source: String,
    /// Its type as the producer names it (`USER_CREATED`, `user.deactivated`).
    pub event_type: String,
    /// When it happened, by the producer's clock.
    pub occurred_at: UnixMillis,
    /// The principals and entities it changes (`User::"u1"`): an event older than the
    /// newest one applied to any of them is stale.
    pub subjects: Vec<String>,
    /// What the event says (its payload), as the live stream shows it.
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// What taking an event did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EventOutcome {
    /// Its effect was made, as this revision.
    Applied {
        /// The store revision of the effect.
        revision: i64,
    },
    /// Known and counted, with no effect by design (`invitation.*`, profile updates).
    Acknowledged,
    /// Taken before (same id): nothing changed.
    Duplicate,
    /// A newer event about the same principal or entity was applied already: nothing
    /// changed.
    Stale,
}

impl EventOutcome {
    /// The label of metrics and the stored outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Acknowledged => "acknowledged",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
        }
    }
}

/// An event that could not be applied, kept whole with the reason.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its own id (time-ordered).
    pub id: String,
    /// The event's id, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Where it came from.
    pub source: String,
    /// When it was received.
    pub received_at: UnixMillis,
    /// Why it was not applied.
    pub reason: String,
    /// The message as received.
    pub body: String,
    /// When it was replayed and applied, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<UnixMillis>,
}

/// One entry of the live event stream (`GET /v1/events/stream`): written in the transaction
/// that took the event or kept the dead letter, numbered without gaps in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its place in the stream: the SSE `id` a console resumes after (`Last-Event-ID`).
    pub seq: i64,
    /// The SSE event name: the event's type when it was applied or acknowledged, `stale`
    /// when a newer event had been applied to its subject, `dead_letter` when it could not
    /// be applied.
    pub name: String,
    /// The SSE data: a JSON object ([`StreamEntry::taken`], [`StreamEntry::dead_letter`]).
    pub data: String,
}

/// The name of stream entries of stale events.
pub const STREAM_STALE: &str = "stale";
/// The name of stream entries of dead letters.
pub const STREAM_DEAD_LETTER: &str = "dead_letter";

impl StreamEntry {
    /// The name and data of the entry of an event taken with `outcome`; `None` for a
    /// duplicate, which is no new event.
    pub fn taken(event: &EventRecord, outcome: EventOutcome) -> Option<(String, String)> {
        let name = match outcome {
            EventOutcome::Duplicate => return None,
            EventOutcome::Stale => STREAM_STALE.to_owned(),
            EventOutcome::Applied { .. } | EventOutcome::Acknowledged => event.event_type.clone(),
        };
        let revision = match outcome {
            EventOutcome::Applied { revision } => Some(revision),
            _ => None,
        };
        let data = serde_json::json!({
            "event_id": event.id,
            "event_type": event.event_type,
            "source": event.source,
            "occurred_at": event.occurred_at,
            "outcome": outcome.as_str(),
            "revision": revision,
            "subjects": event.subjects,
            "data": event.data,
        });
        Some((name, data.to_string()))
    }

    /// The name and data of the entry of a dead letter (its body is not repeated: `GET
    /// /v1/events/dead-letters` has it).
    pub fn dead_letter(letter: &DeadLetter) -> (String, String) {
        let data = serde_json::json!({
            "dead_letter": letter.id,
            "event_id": letter.event_id,
            "source": letter.source,
            "received_at": letter.received_at,
            "reason": letter.reason,
        });
        (STREAM_DEAD_LETTER.to_owned(), data.to_string())
    }
}
