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

use std::time::{Duration, Instant};

/// How often a source reads its queue's backlog for `portcullis_event_backlog`.
const BACKLOG_EVERY: Duration = Duration::from_secs(15);

/// Work a consumer loop does now and then: due at the first turn, then once per period.
struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self { period, last: None }
    }

    /// Whether it is due now; if so, the period starts again.
    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|at| at.elapsed() >= self.period);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}
