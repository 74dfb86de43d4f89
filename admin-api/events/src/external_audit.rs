//! Other services' audit events (seed 004's audit producers publish them to an SNS topic
//! feeding an SQS queue), appended to the ledger as `external` records, chained with
//! Portcullis' own. Each message is validated against the producers' contract
//! (`{event_id, source, action, actor_id, actor_type, entity_id, entity_type,
//! correlation_id, details, occurred_at}`, also inside an SNS notification); one that is no
//! audit event is kept as a dead letter with every problem named, and deleted. A valid one
//! is appended and written (the ledger's `fsync` setting says how durably) before its
//! message is deleted; when the ledger or the store fails, the message stays in the queue
//! for its retry and redrive policy.
//!
//! Once-only: the store notes each event id after its record is written, and a redelivered
//! id is a duplicate. A crash between the write and the note records it twice on
//! redelivery (both records carry the event id): at least once, never lost.

use std::sync::Arc;

use portcullis_ledger::writer::{ExternalRecord, Ledger};
use portcullis_store::Store;
use serde_json::{Map, Value};

use crate::envelope::{Problems, Refused, sns_message};
use crate::ingest::new_dead_letter;
use crate::sources::sqs::Taker;
use crate::{EventMetrics, Unavailable};

/// The kind of source of audit queues, in source names (`audit-sqs:<queue>`) and labels.
pub const KIND: &str = "audit-sqs";

/// What became of one audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Appended to the ledger as this record.
    Recorded(u64),
    /// Recorded before.
    Duplicate,
    /// Not an audit event: kept as this dead letter.
    DeadLettered(String),
}

/// Takes other services' audit events into the ledger.
#[derive(Debug, Clone)]
pub struct ExternalAudit<S> {
    store: S,
    ledger: Arc<Ledger>,
    metrics: EventMetrics,
}

impl<S: Store> ExternalAudit<S> {
    /// Into `ledger`, noting ids in `store`, counting in `metrics`.
    pub fn new(store: S, ledger: Arc<Ledger>, metrics: EventMetrics) -> Self {
        Self {
            store,
            ledger,
            metrics,
        }
    }

    /// Takes one message from `source` (`audit-sqs:<queue>`).
    pub async fn take_audit(&self, source: &str, body: &[u8]) -> Result<Taken, Unavailable> {
        let taken = match audit_event(body) {
            Err(refused) => {
                let letter =
                    new_dead_letter(source, None, format!("not an audit event: {refused}"), body);
                self.store.add_dead_letter(&letter).await?;
                tracing::warn!(
                    source,
                    reason = letter.reason,
                    "audit event kept as a dead letter"
                );
                Taken::DeadLettered(letter.id)
            }
            Ok(event) => self.record(source, event).await?,
        };
        let outcome = match taken {
            Taken::Recorded(_) => "recorded",
            Taken::Duplicate => "duplicate",
            Taken::DeadLettered(_) => "dead_lettered",
        };
        self.metrics
            .external_audit
            .with_label_values(&[outcome])
            .inc();
        Ok(taken)
    }

    async fn record(&self, source: &str, event: AuditEvent) -> Result<Taken, Unavailable> {
        if self.store.external_audit_recorded(&event.id).await? {
            return Ok(Taken::Duplicate);
        }
        let seq = self
            .ledger
            .record_external(event.record)
            .await
            .map_err(|e| Unavailable::Ledger(e.to_string()))?;
        self.store
            .mark_external_audit(&event.id, source, seq)
            .await?;
        Ok(Taken::Recorded(seq))
    }
}

impl<S: Store> Taker for ExternalAudit<S> {
    const KIND: &'static str = KIND;

    fn metrics(&self) -> &EventMetrics {
        &self.metrics
    }

    async fn take(&self, source: &str, body: &[u8], _queued_at: i64) -> Result<(), Unavailable> {
        self.take_audit(source, body).await.map(|_| ())
    }
}

/// A valid audit event: its id, and its record.
struct AuditEvent {
    id: String,
    record: ExternalRecord,
}

/// Reads and validates one audit event, naming every problem.
fn audit_event(body: &[u8]) -> Result<AuditEvent, Refused> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Refused(vec![format!("not JSON: {e}")]))?;
    let inner;
    let value = match sns_message(&value)? {
        Some(message) => {
            inner = serde_json::from_str::<Value>(message)
                .map_err(|e| Refused(vec![format!("not JSON: {e}")]))?;
            &inner
        }
        None => &value,
    };
    let Some(object) = value.as_object() else {
        return Err(Refused(vec![String::from("not a JSON object")]));
    };
    let mut p = Problems::default();
    let id = p.string(object, "event_id");
    let source = p.string(object, "source");
    let action = p.string(object, "action");
    let occurred_at = p.time(object, "occurred_at");
    let actor_id = p.optional_string(object, "actor_id");
    let actor_type = p.optional_string(object, "actor_type");
    let entity_id = p.optional_string(object, "entity_id");
    let entity_type = p.optional_string(object, "entity_type");
    let _correlation = p.optional_string(object, "correlation_id");
    let _details = match object.get("details") {
        None | Some(Value::Null) => None,
        Some(_) => p.object(object, "details"),
    };
    let named = |kind: Option<String>, id: Option<String>| {
        id.map(|id| match kind {
            Some(kind) => format!("{kind}:{id}"),
            None => id,
        })
    };
    p.done(|| {
        occurred_at?;
        source?;
        // The event as published, members as sent (those it did not send left out).
        let event: Map<String, Value> = object.clone();
        Some(AuditEvent {
            id: id?,
            record: ExternalRecord {
                actor: named(actor_type, actor_id),
                action: action?,
                resource: named(entity_type, entity_id),
                event: Value::Object(event),
            },
        })
    })
}
