//! The data plane: what happens to one request, from its target to a forward or a refusal.
//!
//! - [`path`] normalises the target once; [`screen`] refuses what is ambiguous about the
//!   rest (credentials, method overrides, `Host`); [`crate::routes`] maps method + path to
//!   a Cedar action and resource;
//! - [`authn`] verifies the bearer token; [`context`] builds the request facts;
//! - [`DataPlane::check`] runs those steps and the decision core and gives a [`Verdict`]:
//!   public, allowed (with which identity), refused (with which [`respond::Rejection`]) or,
//!   in shadow mode, forwarded with what would have been refused;
//! - [`proxy`] is the Pingora `ProxyHttp` that calls it for every request and also serves
//!   the decision-only endpoint for other gateways, whose question [`gateway`] reads;
//! - [`headers`] owns the identity headers.
//!
//! Everything the checks read — route map, settings, snapshot, keys — is prepared ahead and
//! swapped atomically; nothing here does I/O or holds a lock across an await. In cached
//! state mode the users, services and entities of types not held that a decision reads
//! come from the [`StateCache`](crate::state_cache::StateCache): a hit is a lookup, a miss
//! an awaited fetch with a deadline (503 `state_unavailable` past it).

pub mod assertion;
pub mod authn;
pub mod context;
pub mod cors;
pub mod gateway;
pub mod headers;
pub mod limits;
pub mod path;
pub mod proxy;
pub mod record;
pub mod respond;
pub mod screen;
pub mod staleness;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use ipnet::IpNet;
use portcullis_engine::decision::{
    ClaimedPrincipal, Decision, DecisionRequest, Fetched, FetchedView, MAX_FETCHED, RequestFacts,
    decide, decide_fetched, first_missing,
};
use portcullis_engine::snapshot::SnapshotHandle;
use portcullis_model::PrincipalKind;
use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, Outcome, RouteMetrics};
use crate::routes::RouteMap;
use authn::Authenticator;
use context::ContextSettings;
use gateway::GatewayKind;
use limits::{Allowance, LimitKey};
use path::Target;
use respond::Rejection;
use screen::{RequestError, Screen};
use staleness::Contact;

/// One upstream, ready to connect to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name, for logs.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Connect with TLS.
    pub tls: bool,
    /// TLS server name.
    pub sni: String,
    /// Only for this `Host`.
    pub host: Option<String>,
    /// Only below this path prefix.
    pub path_prefix: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
    /// Keepalive of idle pooled connections.
    pub idle_timeout: Duration,
    /// HTTP/2: by ALPN over TLS, with prior knowledge in the clear.
    pub http2: bool,
}

impl Upstream {
    /// Whether this upstream serves `host` (a name without port or trailing dot, see
    /// [`screen::host`]) and `path`.
    fn serves(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        };
        let prefix = self.path_prefix.as_str();
        let path_ok = prefix.ends_with('/') && path.starts_with(prefix)
            || path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        host_ok && path_ok
    }
}

/// The decision endpoint's settings.
#[derive(Debug, Clone)]
pub struct DecisionEndpoint {
    /// Its path.
    pub path: String,
    /// Peers allowed to call it.
    pub trusted_gateways: Vec<IpNet>,
    /// How the gateway names the request it asks about.
    pub gateway: GatewayKind,
}

/// Everything the data plane decides with apart from the snapshot and the keys: built from
/// the configuration and the route map, replaced whole on reload.
#[derive(Debug)]
pub struct Gate {
    /// The compiled route map.
    pub routes: RouteMap,
    /// Everything else, prepared from the configuration.
    pub settings: GateSettings,
    /// Metric handles per route, by route index; the last one is for unmatched requests.
    route_metrics: Vec<RouteMetrics>,
}

/// Everything of a [`Gate`] but its route map, prepared from the configuration by the
/// application.
#[derive(Debug)]
pub struct GateSettings {
    /// Enforce or shadow.
    pub mode: EnforcementMode,
    /// 403 or 404 for unmatched requests.
    pub unmatched_status: u16,
    /// Context settings.
    pub context: ContextSettings,
    /// Upstreams, first match wins.
    pub upstreams: Vec<Upstream>,
    /// The decision endpoint, if enabled.
    pub decision_endpoint: Option<DecisionEndpoint>,
    /// What a request may not carry.
    pub screen: Screen,
    /// Whether the verified credential goes on to the upstream.
    pub forward_credential: ForwardCredential,
}

/// Enforcement mode (`enforcement.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementMode {
    /// Denied requests are refused.
    Enforce,
    /// Denied requests are counted and logged, and forwarded.
    Shadow,
}

/// What becomes of the caller's `Authorization` header (`auth.forward_credential`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardCredential {
    /// Forwarded when it was verified (protected routes) or, on a public route, as sent;
    /// removed when it did not verify (shadow mode).
    #[default]
    Verified,
    /// Never forwarded.
    None,
}

impl Gate {
    /// A gate over a compiled route map and prepared settings, counting in `metrics`.
    pub fn new(routes: RouteMap, settings: GateSettings, metrics: &Metrics) -> Self {
        let route_metrics = routes
            .routes()
            .iter()
            .map(|r| RouteMetrics::new(metrics, &r.name))
            .chain(std::iter::once(RouteMetrics::new(
                metrics,
                crate::metrics::NO_ROUTE,
            )))
            .collect();
        Self {
            routes,
            settings,
            route_metrics,
        }
    }

    /// The upstream for a host and normalised path.
    pub fn upstream_for(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.settings
            .upstreams
            .iter()
            .position(|u| u.serves(host, path))
    }

    /// The route name for logs.
    pub fn route_name(&self, index: Option<usize>) -> &str {
        index
            .and_then(|i| self.routes.routes().get(i))
            .map_or(crate::metrics::NO_ROUTE, |r| r.name.as_str())
    }

    /// The metric handles of a route (or of unmatched requests).
    pub fn route_metrics(&self, index: Option<usize>) -> Option<&RouteMetrics> {
        match index {
            Some(i) => self.route_metrics.get(i),
            None => self.route_metrics.last(),
        }
    }
}

/// What the upstream may trust about an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The principal id.
    pub subject: String,
    /// `user` or `service`.
    pub principal_type: &'static str,
    /// The principal's tenant in the store.
    pub tenant: Option<String>,
    /// Roles in force.
    pub roles: Vec<String>,
    /// The decision id.
    pub decision_id: String,
    /// The signed identity assertion (`identity_assertion`), when allowed and configured.
    pub assertion: Option<Arc<str>>,
}

/// What the data plane concluded about one request; each kind carries exactly what it has.
/// The proxy, the decision endpoint, the audit record and the metrics all read it.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A public route: forwarded without credentials or a decision.
    Public {
        /// The matched route, by index.
        route: usize,
        /// Where the request stands against the route's rate limit, when forwarded answers
        /// say so (`rate_limits.headers: all`).
        allowance: Option<Allowance>,
    },
    /// Decided and allowed: forwarded with the verified identity.
    Allow {
        /// The matched route, by index.
        route: usize,
        /// Where the request stands against the route's rate limit, when forwarded answers
        /// say so (`rate_limits.headers: all`).
        allowance: Option<Allowance>,
        /// The identity headers for the upstream.
        grant: Grant,
        /// What was decided, for the log and the audit record.
        subject: DecisionSubject,
    },
    /// Refused: `rejection` is answered instead of forwarding.
    Refuse {
        /// The matched route, when one matched.
        route: Option<usize>,
        /// What is answered.
        rejection: Rejection,
        /// What was decided, when the refusal is a decision's.
        subject: Option<DecisionSubject>,
    },
    /// A CORS preflight the route's policy allows: answered 204 with `headers`, never
    /// forwarded.
    Preflight {
        /// The route the announced request would take, by index.
        route: usize,
        /// The `Access-Control-Allow-*` headers.
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// Shadow mode: would have been refused with `would_refuse`; forwarded all the same.
    Shadow {
        /// The matched route, by index.
        route: usize,
        /// What enforcing would have answered.
        would_refuse: Rejection,
        /// The identity headers, when the caller was identified.
        grant: Option<Grant>,
        /// The `Authorization` verified (it may go on to the upstream).
        credential_verified: bool,
        /// What was decided, when a decision was made.
        subject: Option<DecisionSubject>,
    },
}

/// What a decision was about, for the log and the audit record.
#[derive(Debug, Clone)]
pub struct DecisionSubject {
    /// `User::"alice"`.
    pub principal: String,
    /// Cedar action.
    pub action: String,
    /// `Document::"d1"`.
    pub resource: String,
    /// Determining policy ids.
    pub policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// Roles in force only through the token's claims (a principal from claims).
    pub claimed_roles: Vec<String>,
    /// Answered from the decision cache.
    pub cached: bool,
    /// Time in the decision core.
    pub elapsed: Duration,
    /// The request context the decision saw.
    pub facts: RequestFacts,
}

/// Readiness facts, for `/readyz`, and the requests in flight, for shutdown.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Health {
    /// Marks a request in flight until the guard is dropped.
    pub fn request_started(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// SIGTERM arrived: report unready while draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The data plane's shared state.
#[derive(Debug)]
pub struct DataPlane {
    /// Routes and settings.
    pub gate: ArcSwap<Gate>,
    /// The store snapshot.
    pub snapshot: Arc<SnapshotHandle>,
    /// Cached state mode: the users, services and entities of types not held, held apart
    /// from the snapshot (which then holds the shared part only). `None`: the snapshot
    /// holds everything.
    pub state_cache: Option<Arc<crate::state_cache::StateCache>>,
    /// Token verification.
    pub authn: Arc<Authenticator>,
    /// Signs the identity assertion for the upstream, when `identity_assertion` is on.
    pub assertion: Option<Arc<assertion::Asserter>>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Where decisions are recorded, if auditing is on.
    pub recorder: Option<record::Recorder>,
    /// Contact with the control plane (`portcullis proxy`); `None` for `serve`.
    pub contact: Option<Arc<Contact>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The counters of route rate limits.
    pub rate_limiter: limits::RateLimiter,
    /// The brute-force lockout, unless turned off.
    pub lockout: Option<limits::Lockout>,
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection<'a> {
    /// The peer's address.
    pub peer: Option<IpAddr>,
    /// The identity the peer's verified client certificate gives, if it presented one.
    pub client_certificate: Option<&'a authn::certificate::ClientIdentity>,
}

/// A UUIDv7 (time-ordered, so decision ids sort like the log). The random part comes from
/// the thread's userspace CSPRNG: `Uuid::now_v7` asks the kernel for every id.
fn new_decision_id(now_ms: i64) -> String {
    use rand::RngCore;
    let mut random = [0_u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let millis = u64::try_from(now_ms).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

impl DataPlane {
    /// Checks one request: screening, route, authentication, decision. `target` is already
    /// normalised. `connection` is where it came from (a request without a token on a
    /// connection with a verified client certificate is the workload it names).
    /// `forwarded` says whether Portcullis forwards the request itself (and so can strip
    /// what it must not pass on) or only answers for a gateway.
    pub async fn check(
        &self,
        gate: &Gate,
        method: &str,
        target: &Target,
        headers: &HeaderMap,
        connection: Connection<'_>,
        forwarded: bool,
    ) -> Verdict {
        if let Err(e) =
            gate.settings
                .screen
                .check(method, target.query.as_deref(), headers, forwarded)
        {
            self.metrics
                .bad_requests
                .with_label_values(&[e.code()])
                .inc();
            return Verdict::refused(Rejection::BadRequest(e));
        }
        if self.contact.as_ref().is_some_and(|c| c.is_stale()) {
            // Fail closed: the state may be too old to enforce.
            return Verdict::refused(Rejection::Unavailable("state_stale"));
        }
        let Some(matched) = gate.routes.find(method, &target.path) else {
            return Verdict::refused(Rejection::Unmatched {
                status: gate.settings.unmatched_status,
            });
        };
        let (index, route) = (matched.index, matched.route);
        if let Err(too_large) = route.request_limits.check(headers) {
            // Enforced in shadow mode too: a limit protects the upstream, it is no decision.
            self.metrics
                .bad_requests
                .with_label_values(&[too_large.code()])
                .inc();
            return Verdict::Refuse {
                route: Some(index),
                rejection: Rejection::TooLarge(too_large),
                subject: None,
            };
        }
        let refuse = Refusal {
            route: index,
            shadow: gate.settings.mode == EnforcementMode::Shadow || route.shadow,
        };
        // Worked out only when a limit or the lockout needs it.
        let client = || client_key(gate.settings.context.client_ip(connection.peer, headers));
        if route.public {
            let allowance = match &route.rate_limit {
                None => None,
                Some(limit) => {
                    let key = LimitKey::of(limit.by, None, None, client);
                    match self.rate_limiter.check(limit, key).await {
                        Ok(allowance) => self.rate_limiter.announces().then_some(allowance),
                        Err(limited) => {
                            return refuse.unidentified(Rejection::RateLimited(limited), false);
                        }
                    }
                }
            };
            return Verdict::Public {
                route: index,
                allowance,
            };
        }
        let (Some(action), Some(resource_template)) = (&route.action, &route.resource) else {
            // A compiled protected route always has both.
            return refuse.unidentified(Rejection::Unavailable("route_incomplete"), false);
        };

        let now_ms = gate.settings.context.now_ms();
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        // A token when one is sent; else the connection's client certificate, if any.
        let authenticated = match (authorization, connection.client_certificate) {
            (None, Some(cert)) => cert.at(now_ms / 1000).map(|identity| (identity, false)),
            _ => self.authn.authenticate(authorization, now_ms / 1000),
        };
        let identity = match authenticated {
            Ok((identity, cached)) => {
                // A client certificate is not counted as a JWT.
                if authorization.is_some() {
                    let counter = if cached {
                        &self.metrics.hot.jwt_cached
                    } else {
                        &self.metrics.hot.jwt_ok
                    };
                    counter.inc();
                }
                identity
            }
            Err(e) => {
                self.metrics.jwt.with_label_values(&[e.code()]).inc();
                let rejection = if e == authn::AuthnError::NoKeys {
                    Rejection::Unavailable("keys_not_loaded")
                } else if e == authn::AuthnError::KeysStale {
                    Rejection::Unavailable("keys_stale")
                } else {
                    self.failed_authentication(client(), authorization)
                        .unwrap_or(Rejection::Unauthenticated(e))
                };
                return refuse.unidentified(rejection, false);
            }
        };

        let snapshot = self.snapshot.load();
        let leeway_seconds = i64::try_from(self.authn.settings().leeway_seconds).unwrap_or(0);
        if identity
            .session_ids
            .iter()
            .any(|s| snapshot.is_session_revoked(&identity.principal, s, now_ms))
            || snapshot.is_token_revoked_for(
                &identity.principal,
                // The issuer's clock may run up to the leeway ahead of ours: a token that
                // says it was issued that little after a revoke-all may predate it.
                identity
                    .issued_at
                    .map(|iat| iat.saturating_sub(leeway_seconds).saturating_mul(1000)),
                now_ms,
            )
        {
            let rejection = self
                .failed_authentication(client(), authorization)
                .unwrap_or(Rejection::SessionRevoked);
            return refuse.unidentified(rejection, true);
        }
        // Cached state: the principal first (its tenant names the resource), the rest of
        // what the decision reads once the request is resolved.
        let mut fetched: Vec<Arc<Fetched>> = Vec::new();
        if let Some(cache) = &self.state_cache {
            match cache.get(&snapshot, &identity.principal).await {
                Ok(principal) => fetched.push(principal),
                Err(e) => return refuse.state_unavailable(&e),
            }
        }
        let stored_view = match fetched.first() {
            Some(fetched) => match &fetched.view {
                Some(FetchedView::Principal(view)) => Some(view.as_ref()),
                _ => None,
            },
            None => snapshot.principal(&identity.principal).map(AsRef::as_ref),
        };
        // The store wins; its issuer may describe a principal it does not hold by its claims.
        let claimed_view = match (stored_view, identity.claimed.as_deref()) {
            (None, Some(claims)) => Some((claims.view(&snapshot), claims.digest())),
            _ => None,
        };
        let claimed = claimed_view
            .as_ref()
            .map(|(view, digest)| ClaimedPrincipal { view, digest });
        let principal_view = stored_view.or(claimed.map(|c| c.view));
        let known = principal_view.is_some();
        let tenant = principal_view.and_then(|p| p.principal.tenant.clone());
        let decision_id = new_decision_id(jiff::Timestamp::now().as_millisecond());
        let grant = Grant {
            subject: identity.principal.id().to_owned(),
            principal_type: match PrincipalKind::from_cedar_type(identity.principal.type_name()) {
                Some(PrincipalKind::Service) => "service",
                _ => "user",
            },
            tenant: tenant.clone(),
            roles: Vec::new(),
            decision_id: decision_id.clone(),
            assertion: None,
        };

        let resource = resource_template.resolve(&matched.params, tenant.as_deref());
        let parents: Option<Vec<_>> = route
            .parents
            .iter()
            .map(|p| p.resolve(&matched.params, tenant.as_deref()))
            .collect();
        let (Some(resource), Some(parents)) = (resource, parents) else {
            let reason = if !known {
                "unknown_principal"
            } else {
                "no_tenant"
            };
            return refuse.identified(
                Rejection::Denied {
                    decision_id,
                    reason,
                },
                grant,
                None,
            );
        };
        let mut facts =
            gate.settings
                .context
                .facts(&identity, &route.band, connection.peer, headers, now_ms);
        if !route.context.is_empty() {
            let parts = context::RequestParts {
                identity: &identity,
                peer: connection.peer,
                headers,
                query: target.query.as_deref(),
                params: &matched.params,
            };
            match gate.settings.context.extra(&route.context, &parts) {
                Ok(extra) => facts.extra = extra,
                Err(attribute) => {
                    tracing::debug!(attribute, "context attribute refused");
                    self.metrics
                        .bad_requests
                        .with_label_values(&[RequestError::BadContext.code()])
                        .inc();
                    return refuse.identified(
                        Rejection::BadRequest(RequestError::BadContext),
                        grant,
                        None,
                    );
                }
            }
        }
        // After authentication, just before the decision: a refusal names whom, what and
        // which resource it was about.
        let allowance = match &route.rate_limit {
            None => None,
            Some(limit) => {
                let key = LimitKey::of(
                    limit.by,
                    Some(&identity.principal),
                    tenant.as_deref(),
                    client,
                );
                match self.rate_limiter.check(limit, key).await {
                    Ok(allowance) => self.rate_limiter.announces().then_some(allowance),
                    Err(limited) => {
                        let subject = DecisionSubject {
                            principal: identity.principal.to_string(),
                            action: action.clone(),
                            resource: resource.to_string(),
                            policies: Vec::new(),
                            errors: Vec::new(),
                            claimed_roles: Vec::new(),
                            cached: false,
                            elapsed: Duration::ZERO,
                            facts,
                        };
                        return refuse.identified(
                            Rejection::RateLimited(limited),
                            grant,
                            Some(subject),
                        );
                    }
                }
            }
        };
        let request = DecisionRequest {
            principal: &identity.principal,
            action,
            resource: &resource,
            route_parents: &parents,
            facts: &facts,
            claimed,
        };
        let decision = match &self.state_cache {
            None => decide(&snapshot, &request),
            Some(cache) => {
                // Managers, the resource and its ancestors: each at most once, and no
                // more than the decision core can read.
                while let Some(missing) = first_missing(&snapshot, &fetched, &request) {
                    if fetched.len() >= MAX_FETCHED {
                        return refuse.state_unavailable(&"too many keys to fetch");
                    }
                    match cache.get(&snapshot, &missing).await {
                        Ok(view) => fetched.push(view),
                        Err(e) => return refuse.state_unavailable(&e),
                    }
                }
                decide_fetched(&snapshot, &fetched, &request)
            }
        };
        // Taken apart: its lists move into the subject and the grant instead of being
        // copied.
        let Decision {
            allowed,
            reason,
            determining_policies,
            errors,
            effective_roles,
            claimed_roles,
            elapsed,
            cached,
        } = decision;
        let histogram = if cached {
            &self.metrics.hot.decision_cached
        } else {
            &self.metrics.hot.decision_evaluated
        };
        histogram.observe(elapsed.as_secs_f64());
        let subject = DecisionSubject {
            principal: identity.principal.to_string(),
            action: action.clone(),
            resource: resource.to_string(),
            policies: determining_policies,
            errors,
            claimed_roles,
            cached,
            elapsed,
            facts,
        };
        let mut grant = Grant {
            roles: effective_roles,
            ..grant
        };
        if allowed {
            if let Some(asserter) = &self.assertion {
                match asserter.assertion(&grant, now_ms / 1000) {
                    Ok(token) => grant.assertion = Some(token),
                    Err(e) => {
                        // Promised to the upstream and not had: not forwarded without it.
                        tracing::error!(error = %e, "identity assertion not signed");
                        return refuse.identified(
                            Rejection::Unavailable("assertion_unavailable"),
                            grant,
                            Some(subject),
                        );
                    }
                }
            }
            return Verdict::Allow {
                route: index,
                allowance,
                grant,
                subject,
            };
        }
        refuse.identified(
            Rejection::Denied {
                decision_id,
                reason: reason.as_str(),
            },
            grant,
            Some(subject),
        )
    }

    /// Answers a CORS preflight from the policy of the route the announced request would
    /// take: never authenticated, decided or forwarded.
    pub fn preflight(&self, gate: &Gate, target: &Target, headers: &HeaderMap) -> Verdict {
        let refused = |route| Verdict::Refuse {
            route,
            rejection: Rejection::CorsRefused,
            subject: None,
        };
        let announced = headers
            .get(cors::REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default();
        let Some(matched) = gate.routes.find(announced, &target.path) else {
            return refused(None);
        };
        let Some(policy) = &matched.route.cors else {
            return refused(Some(matched.index));
        };
        match policy.preflight(headers) {
            Ok(headers) => Verdict::Preflight {
                route: matched.index,
                headers,
            },
            Err(what) => {
                tracing::debug!(what, "CORS preflight refused");
                refused(Some(matched.index))
            }
        }
    }

    /// Counts a failed authentication (not a missing credential: that is no guess) against
    /// the client and the subject the refused token names; the lockout's refusal when
    /// either is locked out.
    fn failed_authentication(
        &self,
        client: IpAddr,
        authorization: Option<&[u8]>,
    ) -> Option<Rejection> {
        let lockout = self.lockout.as_ref()?;
        let authorization = authorization?;
        let subject = self.authn.claimed_subject(authorization);
        lockout
            .failed(Some(client), subject.as_deref())
            .map(Rejection::LockedOut)
    }
}

/// The key a client address is counted under: an IPv6 address by its /64 (what one
/// host is usually given, so rotating within it counts as one), IPv4 as it is; no address
/// (not over a socket) as the unspecified one.
fn client_key(ip: Option<IpAddr>) -> IpAddr {
    match ip {
        Some(IpAddr::V6(v6)) => {
            let bits = u128::from(v6) & !((1_u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        Some(v4) => v4,
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    }
}

/// How a protected route refuses: answered, or in shadow mode only noted. A 503 is never
/// shadowed (the data plane could not decide, so it cannot forward as if it had).
struct Refusal {
    route: usize,
    shadow: bool,
}

impl Refusal {
    /// The caller was identified, but what the decision reads could not be had (cached
    /// state): 503, never shadowed, never decided on a guess.
    fn state_unavailable(&self, why: &dyn std::fmt::Display) -> Verdict {
        tracing::debug!(error = %why, "state not fetched: refused with state_unavailable");
        self.refuse(
            Rejection::Unavailable("state_unavailable"),
            None,
            true,
            None,
        )
    }

    /// Refused before the caller was identified; `credential_verified` when the token was
    /// good but is refused all the same (a revoked session).
    fn unidentified(&self, rejection: Rejection, credential_verified: bool) -> Verdict {
        self.refuse(rejection, None, credential_verified, None)
    }

    /// Refused after the caller was identified (`grant`), with the decision if one was made.
    fn identified(
        &self,
        rejection: Rejection,
        grant: Grant,
        subject: Option<DecisionSubject>,
    ) -> Verdict {
        self.refuse(rejection, Some(grant), true, subject)
    }

    fn refuse(
        &self,
        rejection: Rejection,
        grant: Option<Grant>,
        credential_verified: bool,
        subject: Option<DecisionSubject>,
    ) -> Verdict {
        if self.shadow && !matches!(rejection, Rejection::Unavailable(_)) {
            Verdict::Shadow {
                route: self.route,
                would_refuse: rejection,
                grant,
                credential_verified,
                subject,
            }
        } else {
            Verdict::Refuse {
                route: Some(self.route),
                rejection,
                subject,
            }
        }
    }
}

impl Verdict {
    /// A request refused before it matched a route (ambiguous target, no upstream,
    /// untrusted gateway, screening).
    pub fn refused(rejection: Rejection) -> Self {
        Self::Refuse {
            route: None,
            rejection,
            subject: None,
        }
    }

    /// The matched route, by index.
    pub fn route(&self) -> Option<usize> {
        match self {
            Self::Public { route, .. }
            | Self::Allow { route, .. }
            | Self::Preflight { route, .. }
            | Self::Shadow { route, .. } => Some(*route),
            Self::Refuse { route, .. } => *route,
        }
    }

    /// For metrics, logs and the audit record.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Public { .. } => Outcome::Public,
            Self::Allow { .. } => Outcome::Allowed,
            Self::Refuse { rejection, .. } => rejection.outcome(),
            Self::Preflight { .. } => Outcome::Preflight,
            Self::Shadow { .. } => Outcome::ShadowDenied,
        }
    }

    /// What is answered instead of forwarding; `None` to forward.
    pub fn refusal(&self) -> Option<&Rejection> {
        match self {
            Self::Refuse { rejection, .. } => Some(rejection),
            _ => None,
        }
    }

    /// Why the request is refused, or would have been in shadow mode.
    pub fn reason(&self) -> Option<&Rejection> {
        match self {
            Self::Refuse { rejection, .. } => Some(rejection),
            Self::Shadow { would_refuse, .. } => Some(would_refuse),
            _ => None,
        }
    }

    /// The identity headers for the upstream: allowed, or identified in shadow mode.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Self::Allow { grant, .. } => Some(grant),
            Self::Shadow { grant, .. } => grant.as_ref(),
            _ => None,
        }
    }

    /// What was decided, when a decision was made.
    pub fn subject(&self) -> Option<&DecisionSubject> {
        match self {
            Self::Allow { subject, .. } => Some(subject),
            Self::Refuse { subject, .. } | Self::Shadow { subject, .. } => subject.as_ref(),
            Self::Public { .. } | Self::Preflight { .. } => None,
        }
    }

    /// Whether the caller's `Authorization` may go on to the upstream: on a public route
    /// (the caller's own, unchecked), or when it was verified and the request is forwarded.
    pub fn forwards_credential(&self) -> bool {
        match self {
            Self::Public { .. } | Self::Allow { .. } => true,
            Self::Shadow {
                credential_verified,
                ..
            } => *credential_verified,
            Self::Refuse { .. } | Self::Preflight { .. } => false,
        }
    }

    /// The decision id, when a decision was made.
    pub fn decision_id(&self) -> Option<&str> {
        match self {
            Self::Allow { grant, .. } => Some(&grant.decision_id),
            Self::Refuse { rejection, .. } => rejection.decision_id(),
            Self::Shadow {
                grant,
                would_refuse,
                ..
            } => grant
                .as_ref()
                .map(|g| g.decision_id.as_str())
                .or_else(|| would_refuse.decision_id()),
            Self::Public { .. } | Self::Preflight { .. } => None,
        }
    }

    /// Where a forwarded request stands against its route's rate limit.
    pub fn allowance(&self) -> Option<Allowance> {
        match self {
            Self::Public { allowance, .. } | Self::Allow { allowance, .. } => *allowance,
            _ => None,
        }
    }
}
