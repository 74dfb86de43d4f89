//! `portcullis-events` owns lifecycle events coming into the control plane: the envelopes
//! of the seed systems ([`envelope`]), what each event type changes ([`effects`]), the
//! one ingestion path every source uses ([`ingest`]): taken once, whole, in order, or
//! kept as a dead letter with the reason; the queues it is fed from ([`sources`]: SQS,
//! Redis Streams — the admin API's `POST /v1/events` hands it bodies itself), what all
//! of it counts ([`metrics`]), and the live stream of what was taken ([`stream`]). Other
//! services' audit events come in beside them, into the ledger ([`external_audit`]).

pub mod effects;
pub mod envelope;
pub mod external_audit;
pub mod ingest;
pub mod metrics;
pub mod sources;
pub mod stream;

pub use ingest::{Ingest, Outcome, Receipt, Unavailable};
pub use metrics::EventMetrics;
