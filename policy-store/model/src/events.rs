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
