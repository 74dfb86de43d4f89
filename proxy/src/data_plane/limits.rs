//! Traffic limits the data plane applies before a decision: the size of a route's requests
//! and how long its upstream may keep it waiting ([`RequestLimits`]), rate limits per route
//! ([`RateLimit`], counted in this process or, for `shared` ones, in Redis) and the
//! brute-force lockout of failed authentications ([`Lockout`]).
//!
//! Both count with the generic cell rate algorithm ([`Gcra`]): one number per key (its
//! theoretical arrival time), so a check is one compare-and-swap, and a bucket idle for its
//! window is full again and can be forgotten. The keys live in bounded tables (`moka`,
//! by entry count, frequency-aware eviction): a flood of new keys (addresses, subjects)
//! costs a bounded amount of memory and does not push out the keys in steady use.
//!
//! A shared limit is one Redis round trip within `rate_limits.redis.timeout_ms`; when Redis
//! is away the proxy counts that key locally against the same limit (each proxy then
//! allows up to the limit on its own: the fallback fails open to a per-proxy limit, never
//! to no limit), and says so once in the log and in
//! `portcullis_rate_limit_checks_total{store="fallback"}`.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use portcullis_l2::rate::{SharedRateLimits, SharedStep};
use portcullis_model::EntityRef;
use prometheus::IntCounter;

use crate::metrics::Metrics;

/// The generic cell rate algorithm over one key: `requests` per `window`, at most `burst`
/// at once. Times are nanoseconds on the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    capacity: u64,
}

/// One step of a [`Gcra`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Allowed: store `tat`; `remaining` more would pass now; the bucket is full again
    /// after `reset`.
    Allowed {
        /// The key's new theoretical arrival time.
        tat: u64,
        /// How many more would be allowed right now.
        remaining: u32,
        /// Nanoseconds until the bucket is full again.
        reset: u64,
    },
    /// Limited: one more is allowed after `wait` nanoseconds.
    Limited {
        /// Nanoseconds until one more is allowed.
        wait: u64,
    },
}

impl Gcra {
    /// `requests` per `window`, `burst` of them at once (both at least 1).
    pub fn new(requests: u32, window: Duration, burst: u32) -> Self {
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let interval = (window / u64::from(requests.max(1))).max(1);
        Self {
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// The time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// How far ahead of now the bucket may run (burst × interval): idle this long, a key's
    /// bucket is full again.
    pub fn capacity(&self) -> Duration {
        Duration::from_nanos(self.capacity)
    }

    /// One request at `now` against a key whose arrival time is `tat` (0 for a new key).
    pub fn step(&self, tat: u64, now: u64) -> Step {
        let next = tat.max(now).saturating_add(self.interval);
        let used = next - now;
        if used > self.capacity {
            return Step::Limited {
                wait: used - self.capacity,
            };
        }
        Step::Allowed {
            tat: next,
            remaining: u32::try_from((self.capacity - used) / self.interval).unwrap_or(u32::MAX),
            reset: used,
        }
    }
}

/// A route's request limits (`request_limits` in the route map); unset ones do not apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestLimits {
    /// The most bytes of request headers (names and values); more: 431.
    pub max_header_bytes: Option<usize>,
    /// The most bytes of request body; more: 413 (by `Content-Length` before anything
    /// else, or while a body without one streams).
    pub max_body_bytes: Option<u64>,
    /// The longest wait for the upstream's next bytes (its response head, then each part
    /// of its body), instead of the upstream's `read_timeout_ms`; past it: 504.
    pub upstream_timeout: Option<Duration>,
    /// The longest wait for the client's next request-body bytes (a body trickled in to
    /// hold the route's upstream); past it: 408 and the connection closed. HTTP/1.1 only.
    pub client_timeout: Option<Duration>,
}

/// Which request limit a request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLarge {
    /// Its headers: 431.
    Headers,
    /// Its body: 413.
    Body,
}

impl TooLarge {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::Headers => 431,
            Self::Body => 413,
        }
    }

    /// A short, stable code for responses, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Headers => "headers_too_large",
            Self::Body => "body_too_large",
        }
    }
}

impl RequestLimits {
    /// Whether a request with `headers` is over a limit before its body is read: its
    /// headers, or the body its `Content-Length` announces.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), TooLarge> {
        if let Some(max) = self.max_header_bytes {
            let size: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if size > max {
                return Err(TooLarge::Headers);
            }
        }
        if let Some(max) = self.max_body_bytes {
            let announced = headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if announced.is_some_and(|length| length > max) {
                return Err(TooLarge::Body);
            }
        }
        Ok(())
    }
}

/// What a route's rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBy {
    /// The authenticated principal.
    Principal,
    /// The principal's tenant (a principal without one is counted on its own).
    Tenant,
    /// The client address (behind trusted hops, from `X-Forwarded-For`).
    Client,
    /// Everyone together.
    Route,
}

impl LimitBy {
    /// The name, for keys, logs and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Principal => "principal",
            Self::Tenant => "tenant",
            Self::Client => "client",
            Self::Route => "route",
        }
    }
}

/// One route's rate limit, compiled from the route map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The route's name: the limit's name in headers and keys.
    pub name: Arc<str>,
    /// The counting.
    pub gcra: Gcra,
    /// What it counts by.
    pub by: LimitBy,
    /// Counted in Redis for every proxy (`rate_limits.redis`), not per proxy.
    pub shared: bool,
    /// The `RateLimit-Policy` value (`"name";q=100;w=60`).
    pub policy: HeaderValue,
}

impl RateLimit {
    /// A limit named `name` of `requests` per `window_seconds` (`burst` at once).
    pub fn new(
        name: &str,
        requests: u32,
        window_seconds: u64,
        burst: u32,
        by: LimitBy,
        shared: bool,
    ) -> Self {
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={requests};w={window_seconds}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"route\""));
        Self {
            name: Arc::from(name),
            gcra: Gcra::new(requests, Duration::from_secs(window_seconds), burst),
            by,
            shared,
            policy,
        }
    }
}

/// What a request is counted against.
#[derive(Debug, Clone, Copy, Hash)]
pub enum LimitKey<'a> {
    /// A principal.
    Principal(&'a EntityRef),
    /// A tenant.
    Tenant(&'a str),
    /// A client address.
    Client(IpAddr),
    /// The route as a whole.
    Route,
}

impl<'a> LimitKey<'a> {
    /// The key a limit counting `by` counts a request under: its `principal` (with its
    /// `tenant`), or its `client` address (asked for only then). A principal without a tenant is counted on its
    /// own; a request without a principal (a public route: the route map allows only
    /// `client` and `route` there) by its address.
    pub fn of(
        by: LimitBy,
        principal: Option<&'a EntityRef>,
        tenant: Option<&'a str>,
        client: impl FnOnce() -> IpAddr,
    ) -> Self {
        match (by, principal, tenant) {
            (LimitBy::Route, _, _) => Self::Route,
            (LimitBy::Tenant, _, Some(tenant)) => Self::Tenant(tenant),
            (LimitBy::Principal | LimitBy::Tenant, Some(principal), _) => {
                Self::Principal(principal)
            }
            (LimitBy::Client | LimitBy::Principal | LimitBy::Tenant, _, _) => {
                Self::Client(client())
            }
        }
    }
}

impl std::fmt::Display for LimitKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Principal(p) => write!(f, "principal:{p}"),
            Self::Tenant(t) => write!(f, "tenant:{t}"),
            Self::Client(ip) => write!(f, "client:{ip}"),
            Self::Route => f.write_str("route"),
        }
    }
}

/// An allowed request's standing, for the `RateLimit` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// How many more would be allowed now.
    pub remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_seconds: u64,
}

/// A request over its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Seconds until one more is allowed (rounded up, at least 1): `Retry-After`.
    pub retry_after_seconds: u64,
    /// The limit's `RateLimit-Policy`.
    pub policy: HeaderValue,
    /// The `RateLimit` value: none remaining, until `retry_after_seconds`.
    pub state: HeaderValue,
}

/// The `RateLimit` header value for an allowance under `limit`.
pub fn rate_limit_header(limit: &RateLimit, allowance: Allowance) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "\"{}\";r={};t={}",
        limit.name, allowance.remaining, allowance.reset_seconds
    ))
    .ok()
}

fn seconds_up(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

/// A key's state in a local table: its arrival time, the end of its lockout (the lockout's
/// keys only), and how long it may sit idle before it is forgotten (by then its bucket is
/// full again, and any lockout over).
#[derive(Debug)]
struct Slot {
    tat: AtomicU64,
    locked_until: AtomicU64,
    idle: Duration,
}

impl Slot {
    /// One request at `now` against this slot's bucket: the arrival time moves on only
    /// when allowed.
    fn take(&self, gcra: Gcra, now: u64) -> Step {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let step = gcra.step(tat, now);
            let Step::Allowed { tat: next, .. } = step else {
                return step;
            };
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return step,
                Err(current) => tat = current,
            }
        }
    }
}

struct IdleFor;

impl moka::Expiry<u64, Arc<Slot>> for IdleFor {
    fn expire_after_create(&self, _: &u64, value: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(value.idle)
    }

    fn expire_after_read(
        &self,
        _: &u64,
        value: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.idle)
    }
}

/// A bounded table of slots. Keys are hashed with a per-process random seed (nobody outside
/// can aim two keys at one slot), so it holds 8-byte keys and a lookup allocates nothing.
struct Table {
    slots: moka::sync::Cache<u64, Arc<Slot>>,
    seed: std::hash::RandomState,
}

impl Table {
    fn new(max_keys: u64) -> Self {
        Self {
            slots: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .expire_after(IdleFor)
                .build(),
            seed: std::hash::RandomState::new(),
        }
    }

    /// The slot of `key`, new (idle for at most `idle`) if the table has none.
    fn slot(&self, key: impl Hash, idle: Duration) -> Arc<Slot> {
        self.slots.get_with(self.seed.hash_one(key), || {
            Arc::new(Slot {
                tat: AtomicU64::new(0),
                locked_until: AtomicU64::new(0),
                idle,
            })
        })
    }

    fn len(&self) -> u64 {
        self.slots.run_pending_tasks();
        self.slots.entry_count()
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("entries", &self.slots.entry_count())
            .finish_non_exhaustive()
    }
}

/// `portcullis_rate_limit_checks_total{store, result}`, resolved once.
#[derive(Debug)]
struct CheckCounters {
    local_allowed: IntCounter,
    local_limited: IntCounter,
    shared_allowed: IntCounter,
    shared_limited: IntCounter,
    fallback_allowed: IntCounter,
    fallback_limited: IntCounter,
}

/// The rate limits of every route, and the counters behind them.
#[derive(Debug)]
pub struct RateLimiter {
    /// Forwarded answers carry the `RateLimit` headers too (`rate_limits.headers: all`).
    announce: bool,
    local: Table,
    shared: Option<SharedRateLimits>,
    /// Redis was away at the last shared check (said once in the log until it is back).
    shared_away: AtomicBool,
    origin: Instant,
    counters: CheckCounters,
}

impl RateLimiter {
    /// Local buckets for up to `max_keys` keys; shared limits counted in `shared` when
    /// given; `announce`: forwarded answers carry the `RateLimit` headers too.
    pub fn new(
        max_keys: u64,
        shared: Option<SharedRateLimits>,
        announce: bool,
        metrics: &Metrics,
    ) -> Self {
        let c = |store: &str, result: &str| {
            metrics
                .rate_limit_checks
                .with_label_values(&[store, result])
        };
        Self {
            announce,
            local: Table::new(max_keys),
            shared,
            shared_away: AtomicBool::new(false),
            origin: Instant::now(),
            counters: CheckCounters {
                local_allowed: c("local", "allowed"),
                local_limited: c("local", "limited"),
                shared_allowed: c("shared", "allowed"),
                shared_limited: c("shared", "limited"),
                fallback_allowed: c("fallback", "allowed"),
                fallback_limited: c("fallback", "limited"),
            },
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether forwarded answers carry the `RateLimit` headers.
    pub fn announces(&self) -> bool {
        self.announce
    }

    /// Counts one request against `limit` for `key`.
    pub async fn check(&self, limit: &RateLimit, key: LimitKey<'_>) -> Result<Allowance, Limited> {
        if limit.shared
            && let Some(shared) = &self.shared
        {
            let redis_key = format!("{}:{}:{key}", limit.name, limit.by.as_str());
            match shared
                .step(&redis_key, limit.gcra.interval(), limit.gcra.capacity())
                .await
            {
                Ok(step) => {
                    if self.shared_away.swap(false, Ordering::Relaxed) {
                        tracing::info!("shared rate limits: Redis answers again");
                    }
                    return match step {
                        SharedStep::Allowed { used } => {
                            self.counters.shared_allowed.inc();
                            let used = u64::try_from(used.as_nanos()).unwrap_or(u64::MAX);
                            Ok(allowance(limit.gcra, used))
                        }
                        SharedStep::Limited { wait } => {
                            self.counters.shared_limited.inc();
                            Err(limited(
                                limit,
                                u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
                            ))
                        }
                    };
                }
                Err(e) => {
                    if !self.shared_away.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %e,
                            "shared rate limits: Redis is away; each proxy counts shared limits on its own until it answers"
                        );
                    }
                    return self.local_step(limit, key, true);
                }
            }
        }
        self.local_step(limit, key, false)
    }

    fn local_step(
        &self,
        limit: &RateLimit,
        key: LimitKey<'_>,
        fallback: bool,
    ) -> Result<Allowance, Limited> {
        let slot = self.local.slot((&*limit.name, key), limit.gcra.capacity());
        let (allowed, limited_counter) = if fallback {
            (
                &self.counters.fallback_allowed,
                &self.counters.fallback_limited,
            )
        } else {
            (&self.counters.local_allowed, &self.counters.local_limited)
        };
        match slot.take(limit.gcra, self.now()) {
            Step::Allowed {
                remaining, reset, ..
            } => {
                allowed.inc();
                Ok(Allowance {
                    remaining,
                    reset_seconds: seconds_up(reset),
                })
            }
            Step::Limited { wait } => {
                limited_counter.inc();
                Err(limited(limit, wait))
            }
        }
    }

    /// Keys held in the local table.
    pub fn keys(&self) -> u64 {
        self.local.len()
    }
}

fn allowance(gcra: Gcra, used: u64) -> Allowance {
    Allowance {
        remaining: u32::try_from(gcra.capacity.saturating_sub(used) / gcra.interval)
            .unwrap_or(u32::MAX),
        reset_seconds: seconds_up(used),
    }
}

fn limited(limit: &RateLimit, wait: u64) -> Limited {
    let retry_after_seconds = seconds_up(wait).max(1);
    let none_left = Allowance {
        remaining: 0,
        reset_seconds: retry_after_seconds,
    };
    Limited {
        retry_after_seconds,
        policy: limit.policy.clone(),
        state: rate_limit_header(limit, none_left)
            .unwrap_or_else(|| HeaderValue::from_static("\"route\";r=0")),
    }
}

/// The brute-force lockout's settings (`lockout` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutSettings {
    /// Failed authentications a key may have in `window` before it is locked out.
    pub max_failures: u32,
    /// The window failures are counted over.
    pub window: Duration,
    /// How long a locked-out key's failures are answered 429.
    pub cool_down: Duration,
    /// Keys (addresses and subjects) counted at most.
    pub max_keys: u64,
}

/// What a failed authentication is counted against.
#[derive(Debug, Clone, Copy, Hash)]
enum StrikeKey<'a> {
    Client(IpAddr),
    Subject(&'a str),
}

/// Failed authentications counted per client address and per claimed subject (the `sub` a
/// refused token names, unverified): past `max_failures` in `window`, that key's failures
/// are answered 429 for `cool_down`. Only failures are ever refused this way: a credential
/// that verifies is decided as always, whoever failed before it from the same address or in
/// the same name.
#[derive(Debug)]
pub struct Lockout {
    settings: LockoutSettings,
    gcra: Gcra,
    strikes: Table,
    origin: Instant,
    locked_clients: IntCounter,
    locked_subjects: IntCounter,
}

/// Why a failure is answered 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedOut {
    /// Seconds until the lockout ends (rounded up).
    pub retry_after_seconds: u64,
}

impl Lockout {
    /// A lockout with `settings`, counting lockouts in `metrics`.
    pub fn new(settings: LockoutSettings, metrics: &Metrics) -> Self {
        Self {
            settings,
            gcra: Gcra::new(
                settings.max_failures,
                settings.window,
                settings.max_failures,
            ),
            strikes: Table::new(settings.max_keys),
            origin: Instant::now(),
            locked_clients: metrics.lockouts.with_label_values(&["client"]),
            locked_subjects: metrics.lockouts.with_label_values(&["subject"]),
        }
    }

    /// Counts one failed authentication from `client` naming `subject`; says whether it is
    /// answered 429 (either key locked out, now or before).
    pub fn failed(&self, client: Option<IpAddr>, subject: Option<&str>) -> Option<LockedOut> {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let by_client = client.and_then(|ip| self.strike(StrikeKey::Client(ip), now));
        let by_subject = subject.and_then(|s| self.strike(StrikeKey::Subject(s), now));
        by_client
            .into_iter()
            .chain(by_subject)
            .max()
            .map(|until| LockedOut {
                retry_after_seconds: seconds_up(until.saturating_sub(now)).max(1),
            })
    }

    /// Counts a failure against `key`; the end of its lockout, if it is locked out.
    fn strike(&self, key: StrikeKey<'_>, now: u64) -> Option<u64> {
        let idle = self.settings.window.max(self.settings.cool_down);
        let strikes = self.strikes.slot(key, idle);
        let locked_until = strikes.locked_until.load(Ordering::Acquire);
        if locked_until > now {
            return Some(locked_until);
        }
        if let Step::Allowed { .. } = strikes.take(self.gcra, now) {
            return None;
        }
        let cool_down = u64::try_from(self.settings.cool_down.as_nanos()).unwrap_or(u64::MAX);
        let until = now.saturating_add(cool_down);
        // Begun once, by whichever failure got here first.
        if strikes
            .locked_until
            .compare_exchange(locked_until, until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let cool_down_seconds = self.settings.cool_down.as_secs();
            match key {
                StrikeKey::Client(ip) => {
                    tracing::warn!(client = %ip, cool_down_seconds, "too many failed authentications from this address: locked out");
                    self.locked_clients.inc();
                }
                StrikeKey::Subject(_) => {
                    // The subject is the caller's unverified claim: not written to the log.
                    tracing::warn!(
                        cool_down_seconds,
                        "too many failed authentications in one subject's name: locked out"
                    );
                    self.locked_subjects.inc();
                }
            }
        }
        Some(strikes.locked_until.load(Ordering::Acquire))
    }

    /// Keys counted now.
    pub fn keys(&self) -> u64 {
        self.strikes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn gcra_lets_a_burst_through_then_one_per_interval() {
        let gcra = Gcra::new(3, Duration::from_secs(3), 3);
        let mut tat = 0;
        for remaining in [2, 1, 0] {
            match gcra.step(tat, 10 * S) {
                Step::Allowed {
                    tat: next,
                    remaining: r,
                    ..
                } => {
                    assert_eq!(r, remaining);
                    tat = next;
                }
                Step::Limited { .. } => panic!("limited inside the burst"),
            }
        }
        assert_eq!(gcra.step(tat, 10 * S), Step::Limited { wait: S });
        // A second later, one more; not two.
        let Step::Allowed {
            tat,
            remaining,
            reset,
        } = gcra.step(tat, 11 * S)
        else {
            panic!("not refilled after the interval");
        };
        assert_eq!((remaining, reset), (0, 3 * S));
        assert!(matches!(gcra.step(tat, 11 * S), Step::Limited { .. }));
        // Idle for the whole capacity: the burst again.
        assert!(matches!(
            gcra.step(tat, 14 * S),
            Step::Allowed { remaining: 2, .. }
        ));
    }

    #[test]
    fn a_burst_below_the_rate_smooths_requests() {
        // 60 a minute, one at a time: a second apart.
        let gcra = Gcra::new(60, Duration::from_secs(60), 1);
        let Step::Allowed {
            tat, remaining: 0, ..
        } = gcra.step(0, 5 * S)
        else {
            panic!("the first is allowed");
        };
        assert_eq!(gcra.step(tat, 5 * S + S / 2), Step::Limited { wait: S / 2 });
        assert!(matches!(gcra.step(tat, 6 * S), Step::Allowed { .. }));
    }

    #[test]
    fn local_limits_count_per_key_and_route() {
        let metrics = Metrics::new();
        let limiter = RateLimiter::new(1000, None, true, &metrics);
        let per_client = RateLimit::new("search", 2, 60, 2, LimitBy::Client, false);
        let other_route = RateLimit::new("upload", 2, 60, 2, LimitBy::Client, false);
        let a = LimitKey::Client("10.0.0.1".parse().unwrap());
        let b = LimitKey::Client("10.0.0.2".parse().unwrap());
        let check =
            |limit, key| futures_util::FutureExt::now_or_never(limiter.check(limit, key)).unwrap();
        assert_eq!(
            check(&per_client, a),
            Ok(Allowance {
                remaining: 1,
                reset_seconds: 30
            })
        );
        assert!(check(&per_client, a).is_ok());
        let limited = check(&per_client, a).unwrap_err();
        assert_eq!(limited.retry_after_seconds, 30);
        assert_eq!(limited.policy, "\"search\";q=2;w=60");
        assert!(
            check(&per_client, b).is_ok(),
            "another client has its own bucket"
        );
        assert!(
            check(&other_route, a).is_ok(),
            "another route has its own bucket"
        );
        assert_eq!(
            metrics
                .rate_limit_checks
                .with_label_values(&["local", "limited"])
                .get(),
            1
        );
    }

    #[test]
    fn the_local_table_stays_within_its_bound_under_a_flood_of_keys() {
        let metrics = Metrics::new();
        let limiter = RateLimiter::new(100, None, true, &metrics);
        let limit = RateLimit::new("r", 10, 60, 10, LimitBy::Client, false);
        for i in 0..10_000_u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ =
                futures_util::FutureExt::now_or_never(limiter.check(&limit, LimitKey::Client(ip)));
        }
        assert!(limiter.keys() <= 100, "{} keys", limiter.keys());
    }

    #[test]
    fn a_locked_out_key_is_answered_429_until_its_cool_down_ends() {
        let metrics = Metrics::new();
        let lockout = Lockout::new(
            LockoutSettings {
                max_failures: 3,
                window: Duration::from_secs(60),
                cool_down: Duration::from_secs(300),
                max_keys: 1000,
            },
            &metrics,
        );
        let attacker: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(lockout.failed(Some(attacker), Some("alice")), None);
        }
        let locked = lockout.failed(Some(attacker), None).unwrap();
        assert!(locked.retry_after_seconds > 290 && locked.retry_after_seconds <= 300);
        // Still locked: failures keep their answer; the count of lockouts does not grow.
        assert!(lockout.failed(Some(attacker), None).is_some());
        assert_eq!(metrics.lockouts.with_label_values(&["client"]).get(), 1);
        // The subject had three failures only: one more locks it too, from anywhere.
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(lockout.failed(Some(elsewhere), Some("alice")).is_some());
        assert_eq!(metrics.lockouts.with_label_values(&["subject"]).get(), 1);
        // Another address with another subject is not affected.
        assert_eq!(
            lockout.failed(Some("203.0.113.9".parse().unwrap()), Some("bob")),
            None
        );
    }
}
