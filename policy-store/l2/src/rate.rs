//! Rate-limit counters shared by every proxy through Redis: the generic cell rate
//! algorithm (GCRA) run by one script, so a check is one round trip and atomic whatever
//! the number of proxies. Time is Redis's own clock (`TIME`), so proxies whose clocks
//! differ still count against one another fairly.
//!
//! A key holds its theoretical arrival time in microseconds and expires once the bucket
//! would be full again, so keys nobody uses fade by themselves.

use std::time::Duration;

use crate::L2Error;
use crate::link::Link;

/// ARGV: emission interval and capacity (burst × interval), in µs. Returns
/// `{1, used}` when allowed (µs of the capacity in use after this request) or
/// `{0, wait}` when limited (µs until one more would be allowed).
const STEP: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local used = next_tat - now
if used > capacity then
  return {0, used - capacity}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil(used / 1000) + 1)
return {1, used}
";

/// What one shared check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedStep {
    /// Allowed; this much of the capacity is in use now.
    Allowed {
        /// Capacity in use, counting this request.
        used: Duration,
    },
    /// Limited; one more is allowed after this long.
    Limited {
        /// Until one more is allowed.
        wait: Duration,
    },
}

/// A client of the shared counters, connected on first use and reconnected by itself.
pub struct SharedRateLimits {
    link: Link,
    prefix: String,
    step: redis::Script,
}

impl std::fmt::Debug for SharedRateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRateLimits")
            .field("prefix", &self.prefix)
            .field("timeout", &self.link.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedRateLimits {
    /// Counters in the Redis at `url`, keys under `prefix`, each check bounded by
    /// `timeout`. Does not connect yet.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            link: Link::new(url, timeout)?,
            prefix: prefix.to_owned(),
            step: redis::Script::new(STEP),
        })
    }

    /// Counts one request against `key` (under the prefix): one more every `interval`,
    /// at most `capacity` ahead.
    pub async fn step(
        &self,
        key: &str,
        interval: Duration,
        capacity: Duration,
    ) -> Result<SharedStep, L2Error> {
        let mut connection = self.link.connection().await?;
        let full_key = format!("{}:{key}", self.prefix);
        let mut invocation = self.step.key(full_key);
        invocation
            .arg(micros(interval).max(1))
            .arg(micros(capacity));
        let (allowed, amount): (i64, i64) = self
            .link
            .call(invocation.invoke_async(&mut connection))
            .await?;
        let amount = Duration::from_micros(u64::try_from(amount).unwrap_or(0));
        Ok(if allowed == 1 {
            SharedStep::Allowed { used: amount }
        } else {
            SharedStep::Limited { wait: amount }
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
