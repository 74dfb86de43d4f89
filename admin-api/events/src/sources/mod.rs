//! The queues events come from. Each source hands [`crate::Ingest`] one message body at
//! a time, in the order the queue gives them, and keeps one rule: a message is
//! acknowledged (SQS `DeleteMessage`, Redis `XACK`) only once it was taken — applied,
//! found a duplicate or stale, acknowledged without effect, or kept as a dead letter. When
//! the store or the ledger fails ([`crate::Unavailable`]) the message and those after it
//! stay in the queue for a later try, and the source backs off. A consumer that dies
//! between taking and acknowledging gets the message again: the store finds it a
//! duplicate. So several control-plane replicas may consume one queue.

pub mod redis;
pub mod sqs;

/// How often a source reads its queue's backlog for `portcullis_event_backlog`.
const BACKLOG_EVERY: std::time::Duration = std::time::Duration::from_secs(15);
