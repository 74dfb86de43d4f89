//! The metrics of lifecycle events, made unregistered: the process registers them in the
//! registry it serves. Every label set is bounded: the kind of source (`http`, `sqs`,
//! `redis`: the part of a source name before `:`), never a queue or stream name; the event
//! type only as one of the known types ([`crate::effects::type_label`]).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// What the ingestion path and the queue sources count.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    /// `portcullis_events_total{source, type, outcome}`: events taken, by type (known
    /// types, `invitation.*`, `other`) and outcome (`applied`, `acknowledged`, `duplicate`,
    /// `stale`, `dead_lettered`).
    pub taken: IntCounterVec,
    /// `portcullis_event_take_seconds{source}`: how long taking one event took (effect
    /// worked out, ledger record, store transaction).
    pub take_seconds: HistogramVec,
    /// `portcullis_event_delay_seconds{source}`: from a message entering its queue (SQS
    /// `SentTimestamp`, a Redis entry id's time) to its being taken.
    pub delay_seconds: HistogramVec,
    /// `portcullis_event_backlog{source}`: messages waiting in the queue, as last seen
    /// (SQS `ApproximateNumberOfMessages`, the Redis group's `lag`).
    pub backlog: IntGaugeVec,
    /// `portcullis_event_source_errors_total{source}`: failed receives and
    /// acknowledgements, and messages left for a later try because the store or the ledger
    /// failed.
    pub source_errors: IntCounterVec,
    /// `portcullis_external_audit_total{outcome}`: other services' audit events taken
    /// from their queue: `recorded` in the ledger, `duplicate` (recorded before),
    /// `dead_lettered` (not an audit event).
    pub external_audit: IntCounterVec,
}

/// The kind of a source name: `sqs` of `sqs:orders`.
pub fn source_kind(source: &str) -> &str {
    source.split_once(':').map_or(source, |(kind, _)| kind)
}

impl EventMetrics {
    /// Made, not registered.
    #[expect(
        clippy::panic,
        reason = "static metric definitions; a failure is a bug the tests catch"
    )]
    pub fn new() -> Self {
        let delays = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let made = (|| -> prometheus::Result<Self> {
            Ok(Self {
                taken: IntCounterVec::new(
                    Opts::new(
                        "portcullis_events_total",
                        "Lifecycle events taken, by kind of source, event type and outcome.",
                    ),
                    &["source", "type", "outcome"],
                )?,
                take_seconds: HistogramVec::new(
                    HistogramOpts::new(
                        "portcullis_event_take_seconds",
                        "Time to take one lifecycle event into the store.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                    &["source"],
                )?,
                delay_seconds: HistogramVec::new(
                    HistogramOpts::new(
                        "portcullis_event_delay_seconds",
                        "Time from a lifecycle event entering its queue to its being taken.",
                    )
                    .buckets(delays),
                    &["source"],
                )?,
                backlog: IntGaugeVec::new(
                    Opts::new(
                        "portcullis_event_backlog",
                        "Lifecycle events waiting in the queue, as last seen.",
                    ),
                    &["source"],
                )?,
                source_errors: IntCounterVec::new(
                    Opts::new(
                        "portcullis_event_source_errors_total",
                        "Failed receives and acknowledgements of queued lifecycle events, and events left for a later try.",
                    ),
                    &["source"],
                )?,
                external_audit: IntCounterVec::new(
                    Opts::new(
                        "portcullis_external_audit_total",
                        "Other services' audit events taken from their queue, by outcome.",
                    ),
                    &["outcome"],
                )?,
            })
        })();
        match made {
            Ok(m) => m,
            Err(e) => panic!("invalid static metric definition: {e}"),
        }
    }
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self::new()
    }
}
