//! The one backoff every reconnect loop uses: exponential from a first delay up to a cap,
//! each wait drawn at random from its upper half ("equal jitter"), so a fleet of sidecars
//! that lost the control plane at the same moment does not come back in lock-step, and
//! none waits more than the cap once it is back.

use std::time::Duration;

use rand::Rng;

/// Delays between attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// From `first` doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap: cap.max(first),
            attempt: 0,
        }
    }

    /// For loops that reach a server which may come back at any moment: 100 ms up to 1 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The next delay: the current ceiling's upper half, at random; the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(2_u32.saturating_pow(self.attempt.min(16)))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// Waits the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure starts from the first delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_upper_half_and_spread() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
        for ceiling in ceilings {
            let d = backoff.next_delay().as_millis();
            assert!((ceiling / 2..=ceiling).contains(&d), "{d} for {ceiling}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::reconnect().next_delay()).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
