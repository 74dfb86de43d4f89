//! How old the data plane's state may be: [`Contact`] records when the state's source (the
//! control plane `portcullis proxy` follows) last confirmed it, and the check refuses
//! requests (503 `state_stale`) once that is longer ago than allowed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// When the control plane was last reached, and how stale is too stale. Measured on the
/// monotonic clock: a wall clock stepped back during an outage cannot make old state look
/// fresh.
#[derive(Debug)]
pub struct Contact {
    started: std::time::Instant,
    /// Milliseconds after `started` of the last contact (negative: before the start).
    last_ms: AtomicI64,
    max_staleness: Duration,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Contact {
    /// Contact tracking with a staleness limit; the state was last known current at
    /// `confirmed_ms` (wall clock, e.g. the last-known-good file's time: read once here).
    pub fn new(max_staleness: Duration, confirmed_ms: i64) -> Self {
        let age_ms = (now_ms() - confirmed_ms).max(0);
        Self {
            started: std::time::Instant::now(),
            last_ms: AtomicI64::new(-age_ms),
            max_staleness,
        }
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The source was reached just now.
    pub fn reached(&self) {
        self.last_ms.store(self.elapsed_ms(), Ordering::Release);
    }

    /// Seconds since the control plane was last reached.
    pub fn age_seconds(&self) -> f64 {
        (self.elapsed_ms() - self.last_ms.load(Ordering::Acquire)).max(0) as f64 / 1000.0
    }

    /// Whether the state is older than allowed.
    pub fn is_stale(&self) -> bool {
        self.age_seconds() > self.max_staleness.as_secs_f64()
    }
}
