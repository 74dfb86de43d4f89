//! One path for every source: read the envelope, work out the effect, take it in the store
//! once; what cannot be applied is kept as a dead letter with the reason and counts as
//! handled (the source acknowledges it and never redelivers it). Only a failing database
//! is an error: the source then leaves the message for a later try.

use portcullis_model::events::{DeadLetter, EventOutcome, EventRecord};
use portcullis_store::{Store, StoreError};
use serde::Serialize;

use crate::effects::effect;
use crate::envelope::{Envelope, SignatureKeys, read};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The event's id, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Its type, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Applied (`revision`), acknowledged, duplicate or stale.
    Taken(EventOutcome),
    /// Kept as a dead letter.
    DeadLettered {
        /// The dead letter's id.
        dead_letter: String,
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The metric label: `applied`, `acknowledged`, `duplicate`, `stale` or
    /// `dead_lettered`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Taken(o) => o.as_str(),
            Self::DeadLettered { .. } => "dead_lettered",
        }
    }
}

/// Takes events into a store.
#[derive(Debug, Clone)]
pub struct Ingest<S> {
    store: S,
    keys: SignatureKeys,
}

/// Whether the store refused the change itself (the event is at fault), rather than failed.
fn refused_by_store(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Invalid(_)
            | StoreError::NotFound(_)
            | StoreError::Conflict(_)
            | StoreError::Policy(_)
    )
}

impl<S: Store> Ingest<S> {
    /// Into `store`; seed-000 signatures checked with `keys` (none: not checked).
    pub fn new(store: S, keys: SignatureKeys) -> Self {
        Self { store, keys }
    }

    /// Takes one message from `source` (`http`, `sqs:<queue>`, `redis:<stream>`).
    pub async fn take(&self, source: &str, body: &[u8]) -> Result<Receipt, StoreError> {
        let envelope = match read(body, &self.keys) {
            Ok(e) => e,
            Err(refused) => {
                return self
                    .dead_letter(source, None, None, refused.to_string(), body)
                    .await;
            }
        };
        self.apply(source, &envelope, body).await
    }

    /// Re-applies a dead letter (after the cause was fixed: a role created, a key added);
    /// marks it replayed when it is taken. It stays a dead letter when it fails again.
    pub async fn replay(&self, id: &str) -> Result<Option<Receipt>, StoreError> {
        let Some(letter) = self.store.dead_letter(id).await? else {
            return Ok(None);
        };
        let envelope = match read(letter.body.as_bytes(), &self.keys) {
            Ok(e) => e,
            Err(refused) => {
                return Ok(Some(Receipt {
                    event_id: letter.event_id,
                    event_type: None,
                    outcome: Outcome::DeadLettered {
                        dead_letter: letter.id,
                        reason: refused.to_string(),
                    },
                }));
            }
        };
        let receipt = match self.effect_and_take(&letter.source, &envelope).await? {
            Ok(outcome) => {
                self.store.mark_replayed(id).await?;
                Outcome::Taken(outcome)
            }
            Err(reason) => Outcome::DeadLettered {
                dead_letter: letter.id,
                reason,
            },
        };
        Ok(Some(Receipt {
            event_id: Some(envelope.id),
            event_type: Some(envelope.event_type),
            outcome: receipt,
        }))
    }

    async fn apply(
        &self,
        source: &str,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<Receipt, StoreError> {
        match self.effect_and_take(source, envelope).await? {
            Ok(outcome) => Ok(Receipt {
                event_id: Some(envelope.id.clone()),
                event_type: Some(envelope.event_type.clone()),
                outcome: Outcome::Taken(outcome),
            }),
            Err(reason) => {
                self.dead_letter(
                    source,
                    Some(envelope.id.clone()),
                    Some(envelope.event_type.clone()),
                    reason,
                    body,
                )
                .await
            }
        }
    }

    /// The outcome, or why the event cannot be applied.
    async fn effect_and_take(
        &self,
        source: &str,
        envelope: &Envelope,
    ) -> Result<Result<EventOutcome, String>, StoreError> {
        let roles = self.store.list_roles().await?;
        let effect = match effect(envelope, &roles) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
        let record = EventRecord {
            id: envelope.id.clone(),
            source: match &envelope.producer {
                Some(p) => format!("{source}/{p}"),
                None => source.to_owned(),
            },
            event_type: envelope.event_type.clone(),
            occurred_at: envelope.occurred_at,
            subjects: effect.subjects,
        };
        match self.store.take_event(&record, &effect.ops).await {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(e) if refused_by_store(&e) => Ok(Err(e.to_string())),
            Err(e) => Err(e),
        }
    }

    async fn dead_letter(
        &self,
        source: &str,
        event_id: Option<String>,
        event_type: Option<String>,
        reason: String,
        body: &[u8],
    ) -> Result<Receipt, StoreError> {
        let now = jiff::Timestamp::now().as_millisecond();
        let letter = DeadLetter {
            id: uuid::Uuid::now_v7().to_string(),
            event_id: event_id.clone(),
            source: source.to_owned(),
            received_at: now,
            reason: reason.clone(),
            body: String::from_utf8_lossy(body).into_owned(),
            replayed_at: None,
        };
        self.store.add_dead_letter(&letter).await?;
        tracing::warn!(source, event_id, reason, "event kept as a dead letter");
        Ok(Receipt {
            event_id,
            event_type,
            outcome: Outcome::DeadLettered {
                dead_letter: letter.id,
                reason,
            },
        })
    }
}
