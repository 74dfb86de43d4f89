//! One path for every source: read the envelope, work out the effect, take it in the store
//! once; what cannot be applied is kept as a dead letter with the reason and counts as
//! handled (the source acknowledges it and never redelivers it). Only a failing database
//! is an error: the source then leaves the message for a later try.

use std::sync::Arc;

use portcullis_ledger::writer::{ChangeRecord, Ledger};
use portcullis_model::events::{DeadLetter, EventOutcome, EventRecord};
use portcullis_store::{Store, StoreError};
use serde::Serialize;

use crate::effects::{effect, type_label};
use crate::envelope::{Envelope, SignatureKeys, read};
use crate::metrics::{EventMetrics, source_kind};
use crate::stream::EventStream;

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
    ledger: Option<Arc<Ledger>>,
    metrics: EventMetrics,
    stream: Arc<EventStream>,
}

/// Why an event could not be taken now: the source keeps it for a later try.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit ledger could not record the change: it is not made, as an admin change
    /// the ledger cannot take is not.
    #[error("the audit ledger cannot record the event: {0}")]
    Ledger(String),
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
        Self {
            store,
            keys,
            ledger: None,
            metrics: EventMetrics::new(),
            stream: Arc::default(),
        }
    }

    /// The live stream of what this path (and, through the store, its replicas) took; it
    /// moves while [`EventStream::follow`] runs.
    pub fn stream(&self) -> &Arc<EventStream> {
        &self.stream
    }

    /// Counts events in `metrics`, which the caller serves.
    #[must_use]
    pub fn counting_in(mut self, metrics: EventMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics events are counted in (the sources count theirs there too).
    pub fn metrics(&self) -> &EventMetrics {
        &self.metrics
    }

    /// Records each change an event makes in `ledger` first, with the event's source and
    /// id as the actor (`event:<source>/<id>`), as admin changes are recorded.
    #[must_use]
    pub fn recording_in(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Takes one message from `source` (`http:<caller>`, `sqs:<queue>`, `redis:<stream>`).
    pub async fn take(&self, source: &str, body: &[u8]) -> Result<Receipt, Unavailable> {
        let started = std::time::Instant::now();
        let receipt = match read(body, &self.keys) {
            Ok(envelope) => self.apply(source, &envelope, body).await?,
            Err(refused) => {
                self.dead_letter(source, None, None, refused.to_string(), body)
                    .await?
            }
        };
        Ok(self.counted(source, receipt, started))
    }

    /// Takes one message from a queue, which it entered at `queued_at` (Unix milliseconds):
    /// as [`Ingest::take`], and the delay counted.
    pub async fn take_queued(
        &self,
        source: &str,
        body: &[u8],
        queued_at: i64,
    ) -> Result<Receipt, Unavailable> {
        let receipt = self.take(source, body).await?;
        let delay_ms = jiff::Timestamp::now().as_millisecond() - queued_at;
        self.metrics
            .delay_seconds
            .with_label_values(&[source_kind(source)])
            .observe(delay_ms.max(0) as f64 / 1000.0);
        Ok(receipt)
    }

    /// Keeps a message that is no event at all (a queue entry without its body) as a dead
    /// letter with `reason`.
    pub async fn refuse(
        &self,
        source: &str,
        body: &[u8],
        reason: String,
    ) -> Result<Receipt, Unavailable> {
        let started = std::time::Instant::now();
        let receipt = self.dead_letter(source, None, None, reason, body).await?;
        Ok(self.counted(source, receipt, started))
    }

    /// `receipt`, counted by outcome and with the time since `started`.
    fn counted(&self, source: &str, receipt: Receipt, started: std::time::Instant) -> Receipt {
        self.stream.wake();
        let kind = source_kind(source);
        self.metrics
            .taken
            .with_label_values(&[
                kind,
                type_label(receipt.event_type.as_deref()),
                receipt.outcome.as_str(),
            ])
            .inc();
        self.metrics
            .take_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        receipt
    }

    /// Re-applies a dead letter (after the cause was fixed: a role created, a key added);
    /// marks it replayed when it is taken. It stays a dead letter when it fails again.
    pub async fn replay(&self, id: &str) -> Result<Option<Receipt>, Unavailable> {
        let Some(letter) = self.store.dead_letter(id).await? else {
            return Ok(None);
        };
        if source_kind(&letter.source) == crate::external_audit::KIND {
            return Ok(Some(Receipt {
                event_id: letter.event_id,
                event_type: None,
                outcome: Outcome::DeadLettered {
                    dead_letter: letter.id,
                    reason: String::from(
                        "an external audit event, not a lifecycle event: send it to its audit queue again, fixed",
                    ),
                },
            }));
        }
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
        let taken = self.effect_and_take(&letter.source, &envelope).await?;
        self.stream.wake();
        let receipt = match taken {
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
    ) -> Result<Receipt, Unavailable> {
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
    ) -> Result<Result<EventOutcome, String>, Unavailable> {
        // A redelivery is a duplicate before anything else: its effect may not be workable
        // any more (a role deleted since), and it must not become a dead letter.
        // (`take_event` checks again, inside its transaction.)
        if self.store.event_taken(&envelope.id).await? {
            return Ok(Ok(EventOutcome::Duplicate));
        }
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
            data: envelope.data.clone(),
        };
        let actor = format!("event:{}/{}", record.source, record.id);
        let action = format!("event.{}", record.event_type);
        if !effect.ops.is_empty() {
            let intent = serde_json::json!({
                "occurred_at": record.occurred_at,
                "subjects": record.subjects,
                "changes": effect.ops.iter().map(|op| format!("{op:?}")).collect::<Vec<_>>(),
            });
            self.record(&actor, &action, None, Some(intent))
                .await
                .map_err(Unavailable::Ledger)?;
        }
        let taken = self.store.take_event(&record, &effect.ops).await;
        let not_made = match &taken {
            Ok(EventOutcome::Duplicate) => Some(String::from("not made: duplicate")),
            Ok(EventOutcome::Stale) => Some(String::from("not made: stale")),
            Ok(_) => None,
            Err(e) => Some(format!("not made: {e}")),
        };
        if let Some(reason) = not_made.filter(|_| !effect.ops.is_empty())
            && let Err(e) = self.record(&actor, &action, Some(reason), None).await
        {
            tracing::error!(error = %e, action, "an event not made not recorded as such");
        }
        match taken {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(e) if refused_by_store(&e) => Ok(Err(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn record(
        &self,
        actor: &str,
        action: &str,
        reason: Option<String>,
        after: Option<serde_json::Value>,
    ) -> Result<(), String> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        ledger
            .record_change(ChangeRecord {
                actor: actor.to_owned(),
                action: action.to_owned(),
                reason,
                after,
                ..ChangeRecord::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn dead_letter(
        &self,
        source: &str,
        event_id: Option<String>,
        event_type: Option<String>,
        reason: String,
        body: &[u8],
    ) -> Result<Receipt, Unavailable> {
        let letter = new_dead_letter(source, event_id.clone(), reason.clone(), body);
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

/// A dead letter received now from `source`: `body` kept as received, with `reason`.
pub(crate) fn new_dead_letter(
    source: &str,
    event_id: Option<String>,
    reason: String,
    body: &[u8],
) -> DeadLetter {
    DeadLetter {
        id: uuid::Uuid::now_v7().to_string(),
        event_id,
        source: source.to_owned(),
        received_at: jiff::Timestamp::now().as_millisecond(),
        reason,
        body: String::from_utf8_lossy(body).into_owned(),
        replayed_at: None,
    }
}
