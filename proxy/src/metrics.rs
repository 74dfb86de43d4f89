//! Every Prometheus metric of the process, registered in the process's own registry: the
//! composition root makes one [`Metrics`] and hands it to whoever counts (the data plane,
//! the follower, reloads, the ops listener that serves it). No metric is a global, so a
//! test (or a second data plane in one process) has counts of its own.
//!
//! Names follow Prometheus conventions (`portcullis_` prefix, base units, `_total` on
//! counters). Labels come from bounded sets only: route *names* from the route map, and the
//! fixed codes of [`Outcome`], [`AuthnError`](crate::data_plane::authn::AuthnError) and
//! friends — never paths, principals, tenants or token values (those go to the audit log).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// What became of a request on the data plane (modelled on Envoy ext_authz's outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decided and allowed.
    Allowed,
    /// Decided and refused (403).
    Denied,
    /// No or bad credentials (401), or a revoked session.
    Unauthenticated,
    /// Refused before routing: the target is ambiguous (400).
    BadRequest,
    /// No route matches (403 or 404).
    Unmatched,
    /// A public route: forwarded without a decision.
    Public,
    /// Shadow mode: would have been refused, was forwarded.
    ShadowDenied,
    /// Not ready (no keys yet, stale state): 503.
    Unavailable,
    /// Something failed inside; the request was refused.
    Error,
    /// Over the route's rate limit: 429.
    RateLimited,
    /// A failed authentication from a locked-out client or subject: 429.
    LockedOut,
    /// A CORS preflight answered by Portcullis (204).
    Preflight,
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Self; 12] = [
        Self::Allowed,
        Self::Denied,
        Self::Unauthenticated,
        Self::BadRequest,
        Self::Unmatched,
        Self::Public,
        Self::ShadowDenied,
        Self::Unavailable,
        Self::Error,
        Self::RateLimited,
        Self::LockedOut,
        Self::Preflight,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Unauthenticated => "unauthenticated",
            Self::BadRequest => "bad_request",
            Self::Unmatched => "unmatched",
            Self::Public => "public",
            Self::ShadowDenied => "shadow_denied",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
            Self::RateLimited => "rate_limited",
            Self::LockedOut => "locked_out",
            Self::Preflight => "preflight",
        }
    }
}

/// The request counters and upstream histogram of one route, resolved once when the route
/// map is loaded, so the request path does no label lookups.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    requests: Vec<prometheus::IntCounter>,
    upstream: Histogram,
}

impl RouteMetrics {
    /// The handles of `route` (every outcome, so each series exists from the start).
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        Self {
            requests: Outcome::ALL
                .iter()
                .map(|o| metrics.requests.with_label_values(&[route, o.as_str()]))
                .collect(),
            upstream: metrics.upstream_seconds.with_label_values(&[route]),
        }
    }

    /// Counts one request.
    pub fn count(&self, outcome: Outcome) {
        if let Some(c) = self.requests.get(outcome as usize) {
            c.inc();
        }
    }

    /// Observes an upstream duration.
    pub fn upstream(&self, seconds: f64) {
        self.upstream.observe(seconds);
    }
}

/// Handles the request path uses on every request, resolved once.
#[derive(Debug)]
pub struct Hot {
    /// `portcullis_jwt_validations_total{outcome="ok"}`.
    pub jwt_ok: prometheus::IntCounter,
    /// `portcullis_jwt_validations_total{outcome="cached"}`.
    pub jwt_cached: prometheus::IntCounter,
    /// `portcullis_decision_duration_seconds{cached="true"}`.
    pub decision_cached: Histogram,
    /// `portcullis_decision_duration_seconds{cached="false"}`.
    pub decision_evaluated: Histogram,
}

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "_unmatched";
/// Route label for the decision endpoint when the original request matched no route.
pub const DECISION_ENDPOINT: &str = "_decision_endpoint";

/// Decision latency buckets, seconds: from 5 µs.
const DECISION_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01,
];

/// Upstream latency buckets, seconds.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// The metrics of one process, in their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The handles the request path uses on every request.
    pub hot: Hot,
    /// `portcullis_requests_total{route, outcome}`.
    pub requests: IntCounterVec,
    /// `portcullis_decision_duration_seconds{cached}`: time in the decision core.
    pub decision_seconds: HistogramVec,
    /// `portcullis_upstream_duration_seconds{route}`: from forwarding to the end of the
    /// response.
    pub upstream_seconds: HistogramVec,
    /// `portcullis_jwt_validations_total{outcome}`: `ok`, `cached`, or an error code.
    pub jwt: IntCounterVec,
    /// `portcullis_bad_requests_total{reason}`: requests refused as ambiguous, by reason.
    pub bad_requests: IntCounterVec,
    /// `portcullis_client_timeouts_total`: requests whose client stopped sending the body
    /// for longer than the route's `client_timeout_ms` (answered 408).
    pub client_timeouts: prometheus::IntCounter,
    /// `portcullis_rate_limit_checks_total{store, result}`: rate-limit checks, counted in
    /// this process (`local`), in Redis (`shared`) or locally because Redis was away
    /// (`fallback`); `allowed` or `limited`.
    pub rate_limit_checks: IntCounterVec,
    /// `portcullis_lockouts_total{key}`: lockouts begun after too many failed
    /// authentications, per `client` address or claimed `subject`.
    pub lockouts: IntCounterVec,
    /// `portcullis_limit_keys{table}`: keys held by the local `rate` limit and `lockout`
    /// tables (each bounded).
    pub limit_keys: IntGaugeVec,
    /// `portcullis_request_head_timeouts_total`: connections closed because a request head
    /// took longer than `listen.request_head_timeout_ms` (slowloris).
    pub request_head_timeouts: prometheus::IntCounter,
    /// `portcullis_snapshot_revision`.
    pub snapshot_revision: IntGauge,
    /// `portcullis_snapshot_age_seconds`: since the snapshot was last built or patched.
    pub snapshot_age: prometheus::Gauge,
    /// `portcullis_snapshot_updates_total{outcome}`: `applied` or `rejected`.
    pub snapshot_updates: IntCounterVec,
    /// `portcullis_routes_unenforceable`: routes the policy set in force cannot decide.
    pub routes_unenforceable: IntGauge,
    /// `portcullis_config_reloads_total{outcome}`: `applied` or `rejected`.
    pub reloads: IntCounterVec,
    /// `portcullis_jwks_refreshes_total{outcome}`: `ok` or `error`.
    pub jwks_refreshes: IntCounterVec,
    /// `portcullis_admin_auth_failures_total{reason}`: the admin API's refused credentials.
    #[cfg(feature = "control-plane")]
    pub admin_auth_failures: IntCounterVec,
    /// `portcullis_sidecar_injections_total{outcome}`: pods the injection webhook answered
    /// (`injected`, `skipped`, `refused`, `invalid`).
    #[cfg(feature = "control-plane")]
    pub injections: IntCounterVec,
    /// Lifecycle events: taken by outcome, take time, queue delay and backlog, source
    /// errors.
    #[cfg(feature = "control-plane")]
    pub events: portcullis_events::EventMetrics,
    /// The users, services and entities a proxy in cached state mode holds apart.
    pub state_cache: StateCacheMetrics,
    /// `portcullis_feed_encodes_total{view}`: revisions encoded for watching sidecars,
    /// `full` and `shared` (once each per revision, whatever the number of sidecars).
    #[cfg(feature = "control-plane")]
    pub feed_encodes: IntCounterVec,
    /// `portcullis_shared_cache_writes_total{outcome}`: the control plane's writes to the
    /// shared cache (`written` slices, `failed` writes, `generations` begun).
    #[cfg(feature = "control-plane")]
    pub shared_cache_writes: IntCounterVec,
    /// `portcullis_build_info{version, cedar}` = 1.
    pub build_info: IntGaugeVec,
    /// `portcullis_request_duration_seconds`: the whole request on the data plane.
    pub request_seconds: Histogram,
    /// The audit ledger's counters, copied from the writer at scrape time.
    pub audit: AuditMetrics,
}

/// `portcullis_state_cache_*`: the cache (L1) of cached state mode — users, services and
/// entities of types not held — and its misses.
#[derive(Debug)]
pub struct StateCacheMetrics {
    /// `portcullis_state_cache_lookups_total{result="hit"}`.
    pub hits: prometheus::IntCounter,
    /// `portcullis_state_cache_lookups_total{result="miss"}`.
    pub misses: prometheus::IntCounter,
    /// `portcullis_state_cache_fetches_total{source, outcome}`: each look at the shared
    /// cache (`shared_cache`) or the control plane (`control_plane`) on a miss: `found`,
    /// `absent` (the shared cache holds none), `stale` (older than a change heard of),
    /// `error`.
    pub fetches: IntCounterVec,
    /// `portcullis_state_cache_miss_duration_seconds`: a miss, from the lookup to the
    /// key in the cache (or the failure).
    pub miss_seconds: Histogram,
    /// `portcullis_state_cache_evictions_total{cause}`: keys evicted because they
    /// `changed`, or every one at once because the stream had a gap (`cleared`).
    pub evictions: IntCounterVec,
    /// `portcullis_state_cache_entries`.
    pub entries: IntGauge,
    /// `portcullis_state_cache_weighted_bytes`: the estimate the bound applies to.
    pub weighted_bytes: IntGauge,
}

/// `portcullis_audit_*`.
#[derive(Debug)]
pub struct AuditMetrics {
    /// `portcullis_audit_records_total`: records written.
    pub records: prometheus::IntCounter,
    /// `portcullis_audit_dropped_total`: entries not recorded (`audit.on_full: drop`).
    pub dropped: prometheus::IntCounter,
    /// `portcullis_audit_refused_total`: requests refused because the queue stayed full.
    pub refused: prometheus::IntCounter,
    /// `portcullis_audit_write_errors_total`: failed batch writes.
    pub write_errors: prometheus::IntCounter,
    /// `portcullis_audit_batches_total`: batches written.
    pub batches: prometheus::IntCounter,
    /// `portcullis_audit_write_seconds_total`: time spent writing batches.
    pub write_seconds: prometheus::Counter,
    /// `portcullis_audit_queue_depth`: entries waiting for the writer.
    pub queue_depth: IntGauge,
    /// `portcullis_audit_sink_forwarded_total{sink}`: records a sink took.
    pub sink_forwarded: IntCounterVec,
    /// `portcullis_audit_sink_errors_total{sink}`: failed sink attempts (retried).
    pub sink_errors: IntCounterVec,
}

fn int_counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    register(r, built(prometheus::IntCounter::new(name, help)))
}

/// Metric definitions here are static (names, help, labels, buckets); building one fails
/// only on a programming error, which `tests::every_metric_builds` catches.
#[expect(
    clippy::panic,
    reason = "static metric definitions; a failure is a bug caught by the unit test"
)]
fn built<T>(metric: prometheus::Result<T>) -> T {
    match metric {
        Ok(m) => m,
        Err(e) => panic!("invalid static metric definition: {e}"),
    }
}

/// Registers `metric` in `r`; the names are unique, so this fails only on a programming
/// error, caught like [`built`]'s.
#[expect(
    clippy::panic,
    reason = "static metric definitions; a failure is a bug caught by the unit test"
)]
fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, metric: T) -> T {
    if let Err(e) = r.register(Box::new(metric.clone())) {
        panic!("metric not registered: {e}");
    }
    metric
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, built(IntCounterVec::new(Opts::new(name, help), labels)))
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        r,
        built(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered in a new registry.
    pub fn new() -> Self {
        Self::build(Registry::new())
    }

    /// The registry's metric families, for the ops listener.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    fn build(registry: Registry) -> Self {
        let r = &registry;
        let snapshot_revision = register(
            r,
            built(IntGauge::new(
                "portcullis_snapshot_revision",
                "Store revision of the snapshot in force.",
            )),
        );
        let snapshot_age = register(
            r,
            built(prometheus::Gauge::new(
                "portcullis_snapshot_age_seconds",
                "Seconds since the snapshot in force was built or last patched.",
            )),
        );
        let build_info = register(
            r,
            built(IntGaugeVec::new(
                Opts::new("portcullis_build_info", "Build facts; always 1."),
                &["version", "cedar"],
            )),
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &cedar_policy::get_sdk_version().to_string(),
            ])
            .set(1);
        let request_seconds = register(r, built(Histogram::with_opts(
        HistogramOpts::new(
            "portcullis_request_duration_seconds",
            "Whole requests on the data plane, from the request header to the end of the response.",
        )
        .buckets(UPSTREAM_BUCKETS.to_vec()),
    )));
        let requests = counter(
            r,
            "portcullis_requests_total",
            "Requests on the data plane by route name and outcome.",
            &["route", "outcome"],
        );
        let decision_seconds = histogram_vec(
            r,
            "portcullis_decision_duration_seconds",
            "Time in the decision core, by whether the decision cache answered.",
            &["cached"],
            DECISION_BUCKETS,
        );
        let jwt = counter(
            r,
            "portcullis_jwt_validations_total",
            "Bearer token checks: ok, cached (verified-token cache hit), or why they failed.",
            &["outcome"],
        );
        Metrics {
            hot: Hot {
                jwt_ok: jwt.with_label_values(&["ok"]),
                jwt_cached: jwt.with_label_values(&["cached"]),
                decision_cached: decision_seconds.with_label_values(&["true"]),
                decision_evaluated: decision_seconds.with_label_values(&["false"]),
            },
            requests,
            decision_seconds,
            jwt,
            upstream_seconds: histogram_vec(
                r,
                "portcullis_upstream_duration_seconds",
                "Forwarded requests, from choosing the upstream to the end of its response.",
                &["route"],
                UPSTREAM_BUCKETS,
            ),
            bad_requests: counter(
                r,
                "portcullis_bad_requests_total",
                "Requests refused as ambiguous before routing (target, credentials, method, host), by reason.",
                &["reason"],
            ),
            client_timeouts: int_counter(
                r,
                "portcullis_client_timeouts_total",
                "Requests whose client stopped sending the body for longer than the route's client_timeout_ms (answered 408).",
            ),
            rate_limit_checks: counter(
                r,
                "portcullis_rate_limit_checks_total",
                "Rate-limit checks: in this process (local), in Redis (shared), or locally because Redis was away (fallback); allowed or limited.",
                &["store", "result"],
            ),
            lockouts: counter(
                r,
                "portcullis_lockouts_total",
                "Lockouts begun after too many failed authentications, by client address or claimed subject.",
                &["key"],
            ),
            limit_keys: register(
                r,
                built(IntGaugeVec::new(
                    prometheus::Opts::new(
                        "portcullis_limit_keys",
                        "Keys held by the bounded local tables of rate limits (rate) and the lockout (lockout).",
                    ),
                    &["table"],
                )),
            ),
            request_head_timeouts: int_counter(
                r,
                "portcullis_request_head_timeouts_total",
                "Connections closed because a request head took longer than listen.request_head_timeout_ms.",
            ),
            snapshot_revision,
            snapshot_age,
            snapshot_updates: counter(
                r,
                "portcullis_snapshot_updates_total",
                "Snapshot updates from the store: applied, or rejected (kept the old one).",
                &["outcome"],
            ),
            routes_unenforceable: register(
                r,
                built(IntGauge::new(
                    "portcullis_routes_unenforceable",
                    "Routes whose action the policy set in force lacks (or no longer applies to their resource type): they deny every request.",
                )),
            ),
            reloads: counter(
                r,
                "portcullis_config_reloads_total",
                "Reloads of configuration, routes and policies: applied or rejected.",
                &["outcome"],
            ),
            jwks_refreshes: counter(
                r,
                "portcullis_jwks_refreshes_total",
                "JWKS loads: ok or error (the previous keys stay in force).",
                &["outcome"],
            ),
            #[cfg(feature = "control-plane")]
            admin_auth_failures: register(r, portcullis_admin_api::auth::failure_counter()),
            #[cfg(feature = "control-plane")]
            injections: {
                let c = counter(
                    r,
                    "portcullis_sidecar_injections_total",
                    "Pods the injection webhook answered: injected, skipped (opted out, excluded, already injected), refused (cannot be injected correctly), invalid (not a review).",
                    &["outcome"],
                );
                for outcome in crate::inject::webhook::OUTCOMES {
                    c.with_label_values(&[outcome]);
                }
                c
            },
            #[cfg(feature = "control-plane")]
            events: {
                let m = portcullis_events::EventMetrics::new();
                portcullis_events::EventMetrics {
                    taken: register(r, m.taken),
                    take_seconds: register(r, m.take_seconds),
                    delay_seconds: register(r, m.delay_seconds),
                    backlog: register(r, m.backlog),
                    source_errors: register(r, m.source_errors),
                    external_audit: register(r, m.external_audit),
                }
            },
            state_cache: {
                let lookups = counter(
                    r,
                    "portcullis_state_cache_lookups_total",
                    "Lookups of users, services and entities in the cache of cached state mode: hit or miss.",
                    &["result"],
                );
                StateCacheMetrics {
                    hits: lookups.with_label_values(&["hit"]),
                    misses: lookups.with_label_values(&["miss"]),
                    fetches: counter(
                        r,
                        "portcullis_state_cache_fetches_total",
                        "Fetches on a miss, by source (shared_cache, control_plane) and outcome (found, absent, stale, error).",
                        &["source", "outcome"],
                    ),
                    miss_seconds: register(
                        r,
                        built(Histogram::with_opts(
                            HistogramOpts::new(
                                "portcullis_state_cache_miss_duration_seconds",
                                "Misses of the state cache, from the lookup to the key held (or the failure).",
                            )
                            .buckets(UPSTREAM_BUCKETS.to_vec()),
                        )),
                    ),
                    evictions: counter(
                        r,
                        "portcullis_state_cache_evictions_total",
                        "Keys evicted from the state cache: changed, or all at once after a gap in the change stream (cleared).",
                        &["cause"],
                    ),
                    entries: register(
                        r,
                        built(IntGauge::new(
                            "portcullis_state_cache_entries",
                            "Users, services and entities held by the state cache.",
                        )),
                    ),
                    weighted_bytes: register(
                        r,
                        built(IntGauge::new(
                            "portcullis_state_cache_weighted_bytes",
                            "The state cache's size estimate, which state.cache_max_bytes bounds.",
                        )),
                    ),
                }
            },
            #[cfg(feature = "control-plane")]
            feed_encodes: counter(
                r,
                "portcullis_feed_encodes_total",
                "Revisions encoded for watching sidecars, by view (full, shared): once each per revision, whatever the number of sidecars.",
                &["view"],
            ),
            #[cfg(feature = "control-plane")]
            shared_cache_writes: counter(
                r,
                "portcullis_shared_cache_writes_total",
                "The control plane's writes to the shared state cache: written (slices), failed (writes), generations (begun).",
                &["outcome"],
            ),
            build_info,
            request_seconds,
            audit: AuditMetrics {
                records: int_counter(
                    r,
                    "portcullis_audit_records_total",
                    "Audit records written.",
                ),
                dropped: int_counter(
                    r,
                    "portcullis_audit_dropped_total",
                    "Audit entries not recorded under audit.on_full = drop: the queue was full or the write failed.",
                ),
                refused: int_counter(
                    r,
                    "portcullis_audit_refused_total",
                    "Requests refused because the audit queue stayed full (back-pressure).",
                ),
                write_errors: int_counter(
                    r,
                    "portcullis_audit_write_errors_total",
                    "Audit batches that could not be written.",
                ),
                batches: int_counter(
                    r,
                    "portcullis_audit_batches_total",
                    "Audit batches written.",
                ),
                write_seconds: register(
                    r,
                    built(prometheus::Counter::new(
                        "portcullis_audit_write_seconds_total",
                        "Time spent writing audit batches.",
                    )),
                ),
                queue_depth: register(
                    r,
                    built(IntGauge::new(
                        "portcullis_audit_queue_depth",
                        "Audit entries waiting for the writer.",
                    )),
                ),
                sink_forwarded: counter(
                    r,
                    "portcullis_audit_sink_forwarded_total",
                    "Audit records forwarded by a sink, in order.",
                    &["sink"],
                ),
                sink_errors: counter(
                    r,
                    "portcullis_audit_sink_errors_total",
                    "Failed attempts of a sink; it retries and resumes where it stopped.",
                    &["sink"],
                ),
            },
            registry,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_builds_and_registers() {
        let m = super::Metrics::new();
        m.requests.with_label_values(&["r", "allowed"]).inc();
        let names: Vec<String> = m.gather().iter().map(|f| f.name().to_owned()).collect();
        for expected in [
            "portcullis_requests_total",
            "portcullis_build_info",
            "portcullis_snapshot_revision",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        // A second set counts on its own.
        let other = super::Metrics::new();
        assert_eq!(other.requests.with_label_values(&["r", "allowed"]).get(), 0);
        assert_eq!(m.requests.with_label_values(&["r", "allowed"]).get(), 1);
    }
}
