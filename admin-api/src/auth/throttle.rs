//! Throttling of failed admin authentications, per client address: after `max_failures`
//! bad or missing credentials within `window`, every further failure from that address is
//! answered 429 (with `Retry-After`) until the window ends. A credential that verifies is
//! never refused here — a shared address (a NAT, a node's pods) must not let one client's
//! bad guesses lock out another's valid token — and successful calls do not count. Admin
//! tokens and JWT signatures are far beyond guessing, so what the throttle buys is a slower,
//! visible flood: bad credentials past the limit are answered 429 and counted as such.
//!
//! The table is bounded: past [`MAX_CLIENTS`] addresses, expired entries are dropped, and
//! failures from addresses that still do not fit are counted under one shared entry (many
//! addresses failing at once are throttled together rather than not at all).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at once.
pub const MAX_CLIENTS: usize = 10_000;

/// The shared entry for addresses that did not fit in the table.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// How many failures are tolerated per address and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    /// Failures allowed in one window; the next call is refused.
    pub max_failures: u32,
    /// How long a window lasts from its first failure.
    pub window: Duration,
}

impl Default for FailureLimit {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Failures counted per address.
#[derive(Debug)]
pub struct Throttle {
    limit: FailureLimit,
    clients: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Throttle {
    /// A throttle with `limit`.
    pub fn new(limit: FailureLimit) -> Self {
        Self {
            limit,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` when `client` is over its limit at `now`.
    pub fn refused(&self, client: IpAddr, now: Instant) -> Option<u64> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let window = clients
            .get(&client)
            .filter(|w| w.failures >= self.limit.max_failures)
            .or_else(|| {
                clients
                    .get(&OVERFLOW)
                    .filter(|w| w.failures >= self.limit.max_failures)
                    .filter(|_| !clients.contains_key(&client))
            })?;
        let ends = window.started + self.limit.window;
        (ends > now).then(|| ends.duration_since(now).as_secs().max(1))
    }

    /// Counts a failed authentication from `client` at `now`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let window_length = self.limit.window;
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, w| w.started + window_length > now);
        }
        let key = if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            OVERFLOW
        } else {
            client
        };
        let window = clients.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if window.started + window_length <= now {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let throttle = Throttle::new(FailureLimit {
            max_failures: 3,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(throttle.refused(ip(1), t0), None);
            throttle.failed(ip(1), t0);
        }
        assert_eq!(throttle.refused(ip(1), t0), Some(60));
        assert_eq!(
            throttle.refused(ip(1), t0 + Duration::from_secs(59)),
            Some(1)
        );
        assert_eq!(throttle.refused(ip(2), t0), None, "other addresses pass");
        let later = t0 + Duration::from_secs(60);
        assert_eq!(throttle.refused(ip(1), later), None, "the window ended");
        throttle.failed(ip(1), later);
        assert_eq!(throttle.refused(ip(1), later), None, "a new window");
    }

    #[test]
    fn addresses_beyond_the_table_share_one_limit() {
        let throttle = Throttle::new(FailureLimit {
            max_failures: 2,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let clients = u32::try_from(MAX_CLIENTS).unwrap();
        for n in 0..clients {
            throttle.failed(ip(n), t0);
        }
        let (a, b) = (ip(clients + 1), ip(clients + 2));
        throttle.failed(a, t0);
        assert_eq!(throttle.refused(b, t0), None);
        throttle.failed(b, t0);
        assert_eq!(throttle.refused(a, t0), Some(60));
        assert_eq!(throttle.refused(b, t0), Some(60));
        assert_eq!(throttle.refused(ip(5), t0), None, "tracked on its own");
        assert_eq!(
            throttle.clients.lock().unwrap().len(),
            MAX_CLIENTS + 1,
            "bounded"
        );
    }
}
