//! `portcullis-events` owns lifecycle events coming into the control plane: the envelopes
//! of the seed systems ([`envelope`]), what each event type changes ([`effects`]), and the
//! one ingestion path every source uses ([`ingest`]): taken once, whole, in order, or
//! kept as a dead letter with the reason. The sources (the admin API's `POST /v1/events`,
//! and the queue consumers) only hand it message bodies.

pub mod effects;
pub mod envelope;
pub mod ingest;

pub use ingest::{Ingest, Outcome, Receipt, Unavailable};
