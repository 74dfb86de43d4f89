//! The Pingora `ProxyHttp` of the data plane: access control in `request_filter` (a refusal
//! is written there and ends the request), the upstream chosen in `upstream_peer`, identity
//! headers and the normalised target set in `upstream_request_filter`, metrics and the
//! decision log in `logging`.
//!
//! The same listener serves the decision-only endpoint (`decision_endpoint.path`) for the
//! one configured kind of gateway in front ([`super::gateway`]: nginx `auth_request`,
//! Traefik forwardAuth or Envoy's HTTP ext_authz). It answers 200 with the identity
//! headers, or the refusal, and forwards nothing. Only configured trusted gateways may
//! call it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use super::authn::certificate::ClientIdentity;
use super::context::ip_text;
use super::cors;
use super::gateway::original_request;
use super::headers::{self, Strip, edit_upstream_request, identity_headers, strip_client_headers};
use super::limits::TooLarge;
use super::limits::rate_limit_header;
use super::path::{PathError, Target, normalize};
use super::respond::{
    RATE_LIMIT, RATE_LIMIT_POLICY, Rejection, forwarding_failure, is_grpc, send_grpc,
};
use super::screen;
use super::{Connection, DataPlane, ForwardCredential, Gate, InFlight, Verdict};
use crate::metrics::Outcome;

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    gate: Option<Arc<Gate>>,
    target: Option<Target>,
    verdict: Option<Verdict>,
    upstream: Option<usize>,
    upstream_started: Option<Instant>,
    traceparent: Option<(String, String)>,
    outcome: Outcome,
    /// Request body bytes read so far, against the route's `max_body_bytes`.
    body_bytes: u64,
    /// The body grew past the route's limit: answered 413.
    body_too_large: bool,
    /// Counts this request for shutdown until the context is dropped.
    _in_flight: InFlight,
}

/// The data-plane proxy.
#[derive(Debug)]
pub struct EnforcingProxy {
    plane: Arc<DataPlane>,
}

impl EnforcingProxy {
    /// A proxy over the shared data-plane state.
    pub fn new(plane: Arc<DataPlane>) -> Self {
        Self { plane }
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The identity the connection's verified client certificate gives, if it presented one.
fn client_certificate(session: &Session) -> Option<&ClientIdentity> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<ClientIdentity>()
}

/// Whether the request line's target carried a `#` fragment. Pingora drops fragments while
/// parsing, so the raw request line is the only place it can still be seen.
fn had_fragment(session: &Session) -> bool {
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    let raw = h1.get_headers_raw_bytes();
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    line.contains(&b'#')
}

/// The route a request matched, once it has been checked.
fn route_of(ctx: &RequestCtx) -> Option<&crate::routes::Route> {
    let route = ctx.verdict.as_ref().and_then(Verdict::route)?;
    ctx.gate.as_ref()?.routes.routes().get(route)
}

/// The CORS headers of an answer on the request's route: `Vary: Origin` whenever the route
/// has a policy, and `Access-Control-Allow-Origin` (with credentials, if allowed) for an
/// origin it allows.
fn cors_headers(
    ctx: &RequestCtx,
    headers: &http::HeaderMap,
) -> Vec<(HeaderName, http::HeaderValue)> {
    let Some(policy) = route_of(ctx).and_then(|route| route.cors.as_ref()) else {
        return Vec::new();
    };
    let mut out = vec![(http::header::VARY, http::HeaderValue::from_static("Origin"))];
    // A preflight's answer holds its own (or, refused, none).
    let preflight = matches!(
        ctx.verdict,
        Some(
            Verdict::Preflight { .. }
                | Verdict::Refuse {
                    rejection: Rejection::CorsRefused,
                    ..
                }
        )
    );
    if !preflight && let Some(origin) = policy.allowed_origin(headers) {
        out.extend(policy.response_headers(origin));
    }
    out
}

fn header_text<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

impl EnforcingProxy {
    /// Handles a call of the decision endpoint; always answers it.
    async fn decision_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        gate: &Gate,
        prefix_len: usize,
    ) -> pingora::Result<bool> {
        let Some(endpoint) = &gate.settings.decision_endpoint else {
            return Ok(false);
        };
        let peer = peer_ip(session);
        let verdict =
            if peer.is_some_and(|ip| endpoint.trusted_gateways.iter().any(|n| n.contains(&ip))) {
                let req = session.req_header();
                let asked = original_request(
                    endpoint.gateway,
                    &req.headers,
                    req.method.as_str(),
                    req.raw_path(),
                    prefix_len,
                );
                match asked {
                    Err(e) => {
                        self.plane
                            .metrics
                            .bad_requests
                            .with_label_values(&[e.code()])
                            .inc();
                        Verdict::refused(Rejection::BadRequest(e))
                    }
                    Ok(asked) => match normalize(&asked.target) {
                        Err(e) => {
                            self.plane
                                .metrics
                                .bad_requests
                                .with_label_values(&[e.code()])
                                .inc();
                            Verdict::refused(Rejection::BadTarget(e))
                        }
                        Ok(target) => {
                            let verdict = self
                                .plane
                                .check(
                                    gate,
                                    asked.method,
                                    &target,
                                    &req.headers,
                                    // The gateway's connection: its certificate is not the
                                    // caller's.
                                    Connection {
                                        peer,
                                        client_certificate: None,
                                    },
                                    false,
                                )
                                .await;
                            ctx.target = Some(target);
                            verdict
                        }
                    },
                }
            } else {
                Verdict::refused(Rejection::UntrustedGateway)
            };
        let refusal = self.record(ctx, gate, verdict).await;
        if let Some(rejection) = refusal {
            rejection.send(session, &[]).await?;
            return Ok(true);
        }
        let mut header = ResponseHeader::build(200, Some(7))?;
        if let Some(grant) = ctx.verdict.as_ref().and_then(Verdict::grant) {
            for (name, value) in identity_headers(grant) {
                header.insert_header(name, value)?;
            }
        }
        header.insert_header(http::header::CONTENT_LENGTH, "0")?;
        header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(Bytes::new()), true)
            .await?;
        Ok(true)
    }

    /// Records the checked request in the audit ledger and keeps it in the context; returns
    /// what to answer instead of forwarding (the check's refusal, or a 503 when the ledger
    /// cannot take the record).
    async fn record(
        &self,
        ctx: &mut RequestCtx,
        gate: &Gate,
        verdict: Verdict,
    ) -> Option<Rejection> {
        ctx.outcome = verdict.outcome();
        let mut refusal = verdict.refusal().cloned();
        if let Some(recorder) = &self.plane.recorder {
            let route = gate
                .routes
                .routes()
                .get(verdict.route().unwrap_or(usize::MAX));
            let trace_id = ctx.traceparent.as_ref().map(|(_, t)| t.as_str());
            if let Err(unavailable) = recorder
                .record(
                    &verdict,
                    route.map_or(crate::metrics::NO_ROUTE, |r| r.name.as_str()),
                    route.map_or("GREEN", |r| r.band.as_str()),
                    trace_id,
                )
                .await
            {
                ctx.outcome = unavailable.outcome();
                refusal = Some(unavailable);
            }
        }
        ctx.verdict = Some(verdict);
        refusal
    }
}

#[async_trait]
impl ProxyHttp for EnforcingProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            started: Instant::now(),
            gate: None,
            target: None,
            verdict: None,
            upstream: None,
            upstream_started: None,
            traceparent: None,
            outcome: Outcome::Error,
            body_bytes: 0,
            body_too_large: false,
            _in_flight: self.plane.health.request_started(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let gate = self.plane.gate.load_full();
        ctx.gate = Some(Arc::clone(&gate));
        if self.plane.health.is_draining() {
            // Keep serving while draining, but close connections so clients move on.
            session.set_keepalive(None);
        }

        ctx.traceparent = Some(headers::next_traceparent(header_text(
            session.req_header(),
            headers::TRACEPARENT,
        )));
        let raw = session.req_header().raw_path();
        if let Some(endpoint) = &gate.settings.decision_endpoint {
            let p = endpoint.path.as_bytes();
            if raw.starts_with(p) && matches!(raw.get(p.len()), None | Some(b'/' | b'?')) {
                return self.decision_endpoint(session, ctx, &gate, p.len()).await;
            }
        }

        let req = session.req_header();
        let host = screen::host(
            req.version,
            &req.headers,
            req.uri.authority().map(|a| a.as_str()),
        );
        let normalized = if had_fragment(session) {
            Err(PathError::Fragment)
        } else {
            normalize(raw)
        };
        let verdict = match (host, normalized) {
            (Err(e), _) => {
                self.plane
                    .metrics
                    .bad_requests
                    .with_label_values(&[e.code()])
                    .inc();
                Verdict::refused(Rejection::BadRequest(e))
            }
            (_, Err(e)) => {
                self.plane
                    .metrics
                    .bad_requests
                    .with_label_values(&[e.code()])
                    .inc();
                Verdict::refused(Rejection::BadTarget(e))
            }
            (Ok(host), Ok(mut target)) => {
                if let Some(query) = gate.settings.screen.strip_query(target.query.as_deref()) {
                    target.query = query;
                }
                let verdict = match gate.upstream_for(host, &target.path) {
                    None => Verdict::refused(Rejection::NoUpstream),
                    Some(_) if cors::is_preflight(req.method.as_str(), &req.headers) => {
                        self.plane.preflight(&gate, &target, &req.headers)
                    }
                    Some(upstream) => {
                        ctx.upstream = Some(upstream);
                        self.plane
                            .check(
                                &gate,
                                req.method.as_str(),
                                &target,
                                &req.headers,
                                Connection {
                                    peer: peer_ip(session),
                                    client_certificate: client_certificate(session),
                                },
                                true,
                            )
                            .await
                    }
                };
                ctx.target = Some(target);
                verdict
            }
        };
        let refusal = self.record(ctx, &gate, verdict).await;
        let cors = cors_headers(ctx, &session.req_header().headers);
        if let Some(rejection) = refusal {
            rejection.send(session, &cors).await?;
            return Ok(true);
        }
        if let Some(Verdict::Preflight { headers, .. }) = &ctx.verdict {
            let mut header = ResponseHeader::build(204, Some(headers.len() + 2))?;
            for (name, value) in headers.iter().chain(&cors) {
                header.append_header(name.clone(), value.clone())?;
            }
            header.insert_header(http::header::CONTENT_LENGTH, "0")?;
            session
                .write_response_header(Box::new(header), true)
                .await?;
            return Ok(true);
        }
        // Forwarded: the client must keep its body coming.
        if let Some(timeout) = route_of(ctx).and_then(|r| r.request_limits.client_timeout) {
            session.set_read_timeout(Some(timeout));
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        let upstream = ctx
            .gate
            .as_ref()
            .zip(ctx.upstream)
            .and_then(|(gate, i)| gate.settings.upstreams.get(i))
            .ok_or_else(|| {
                pingora::Error::explain(pingora::ErrorType::InternalError, "no upstream chosen")
            })?;
        let mut peer = HttpPeer::new(
            upstream.address.as_str(),
            upstream.tls,
            upstream.sni.clone(),
        );
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        let route_timeout = route_of(ctx).and_then(|r| r.request_limits.upstream_timeout);
        peer.options.read_timeout = Some(route_timeout.unwrap_or(upstream.read_timeout));
        peer.options.idle_timeout = Some(upstream.idle_timeout);
        if upstream.http2 {
            // Over TLS, ALPN may still settle on HTTP/1.1; in the clear there is no
            // negotiation: HTTP/2 only.
            let min = if upstream.tls { 1 } else { 2 };
            peer.options.set_http_version(2, min);
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // INVARIANT: the upstream receives exactly the target that was authorised.
        let target = ctx.target.as_ref().ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "no normalised target")
        })?;
        let uri: http::Uri = target.path_and_query().parse().map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "normalised target")
        })?;
        let peer = peer_ip(session);
        let gate = ctx
            .gate
            .as_ref()
            .ok_or_else(|| pingora::Error::explain(pingora::ErrorType::InternalError, "no gate"))?;
        let trusted_peer = gate.settings.context.is_trusted(peer);
        let keep_authorization = gate.settings.forward_credential == ForwardCredential::Verified
            && ctx
                .verdict
                .as_ref()
                .is_some_and(Verdict::forwards_credential);
        let https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        edit_upstream_request(upstream_request, |request| {
            // Over HTTP/2 the host came as `:authority`, part of the target replaced here:
            // it goes on as `Host` (an HTTP/2 upstream turns it back into `:authority`).
            let authority = request.uri.authority().cloned();
            request.uri = uri;
            let map = &mut request.headers;
            if let Some(authority) = authority
                && !map.contains_key(http::header::HOST)
            {
                map.insert(http::header::HOST, headers::value(authority.as_str())?);
            }
            strip_client_headers(
                map,
                Strip {
                    trusted_peer,
                    authorization: !keep_authorization,
                },
            );
            // Room for what is added: no growing and rehashing the map on the way.
            map.reserve(8);
            if let Some((traceparent, _)) = &ctx.traceparent {
                map.insert(
                    const { HeaderName::from_static(headers::TRACEPARENT) },
                    headers::value(traceparent.as_str())?,
                );
            }
            if let Some(grant) = ctx.verdict.as_ref().and_then(Verdict::grant) {
                for (name, value) in identity_headers(grant) {
                    map.insert(name, headers::value(value)?);
                }
            }
            // The client address as we see it; a chain is only extended for trusted hops
            // (from anyone else, the forwarding headers are gone by now).
            if let Some(ip) = peer {
                let forwarded_for =
                    const { HeaderName::from_static(super::context::FORWARDED_FOR) };
                let chain = map.get(&forwarded_for).and_then(|v| v.to_str().ok());
                let forwarded = match chain {
                    Some(chain) => format!("{chain}, {}", ip_text(ip)),
                    None => ip_text(ip),
                };
                map.insert(forwarded_for, headers::value(forwarded)?);
            }
            let forwarded_proto = const { HeaderName::from_static("x-forwarded-proto") };
            if !map.contains_key(&forwarded_proto) {
                let scheme = if https { "https" } else { "http" };
                map.insert(forwarded_proto, http::HeaderValue::from_static(scheme));
            }
            Ok(())
        })
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        for (name, value) in cors_headers(ctx, &session.req_header().headers) {
            // The upstream's own say on CORS gives way to the route's policy; its `Vary`
            // stays, with `Origin` beside it.
            if name != http::header::VARY {
                upstream_response.remove_header(&name);
            }
            upstream_response.append_header(name, value)?;
        }
        // The client can quote the decision id when asking why; it names nothing else.
        if let Some(id) = ctx.verdict.as_ref().and_then(Verdict::decision_id) {
            upstream_response.insert_header(headers::DECISION_ID, id)?;
        }
        // Where the client stands against the route's rate limit.
        let allowance = ctx.verdict.as_ref().and_then(Verdict::allowance);
        let limit = route_of(ctx).and_then(|route| route.rate_limit.as_ref());
        if let Some((allowance, limit)) = allowance.zip(limit) {
            upstream_response.insert_header(RATE_LIMIT_POLICY, limit.policy.clone())?;
            if let Some(state) = rate_limit_header(limit, allowance) {
                upstream_response.insert_header(RATE_LIMIT, state)?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let Some(max) = route_of(ctx).and_then(|r| r.request_limits.max_body_bytes) else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > max {
            // A body without a `Content-Length` (or longer than it said) grew past the
            // limit: the request ends here, answered 413 in `fail_to_proxy`.
            ctx.body_too_large = true;
            self.plane
                .metrics
                .bad_requests
                .with_label_values(&[TooLarge::Body.code()])
                .inc();
            return Err(pingora::Error::explain(
                pingora::ErrorType::Custom("body_too_large"),
                "request body over the route's max_body_bytes",
            ));
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = if ctx.body_too_large {
            413
        } else {
            match (e.esource(), e.etype()) {
                (pingora::ErrorSource::Upstream, pingora::ErrorType::ReadTimedout) => 504,
                (pingora::ErrorSource::Upstream, _) => 502,
                (pingora::ErrorSource::Downstream, pingora::ErrorType::ReadTimedout) => {
                    self.plane.metrics.client_timeouts.inc();
                    408
                }
                (pingora::ErrorSource::Downstream, _) => 0,
                (pingora::ErrorSource::Internal | pingora::ErrorSource::Unset, _) => 500,
            }
        };
        if code > 0 {
            ctx.outcome = if matches!(code, 408 | 413) {
                Outcome::BadRequest
            } else {
                Outcome::Error
            };
            let (reason, body) = forwarding_failure(code);
            let grpc = is_grpc(&session.req_header().headers);
            let sent = async {
                let mut header = ResponseHeader::build(code, Some(5))?;
                if grpc {
                    return send_grpc(session, header, reason).await;
                }
                header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
                session
                    .write_response_header(Box::new(header), false)
                    .await?;
                session
                    .write_response_body(Some(Bytes::from_static(body)), true)
                    .await
            };
            if let Err(write_error) = sent.await {
                tracing::debug!(error = %write_error, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&pingora::Error>,
        ctx: &mut Self::CTX,
    ) {
        let elapsed = ctx.started.elapsed();
        let route = ctx.gate.as_ref().map_or(crate::metrics::NO_ROUTE, |g| {
            g.route_name(ctx.verdict.as_ref().and_then(Verdict::route))
        });
        let outcome = if error.is_some() && ctx.outcome == Outcome::Allowed {
            Outcome::Error
        } else {
            ctx.outcome
        };
        let route_metrics = ctx
            .gate
            .as_ref()
            .and_then(|g| g.route_metrics(ctx.verdict.as_ref().and_then(Verdict::route)));
        if let Some(m) = route_metrics {
            m.count(outcome);
            if let Some(started) = ctx.upstream_started {
                m.upstream(started.elapsed().as_secs_f64());
            }
        }
        self.plane
            .metrics
            .request_seconds
            .observe(elapsed.as_secs_f64());
        let verdict = ctx.verdict.as_ref();
        let refusal = verdict.and_then(Verdict::reason);
        let subject = verdict.and_then(Verdict::subject);
        let decision_id = verdict.and_then(Verdict::decision_id);
        let trace_id = ctx.traceparent.as_ref().map(|(_, t)| t.as_str());
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if matches!(
            outcome,
            Outcome::Denied | Outcome::ShadowDenied | Outcome::Unauthenticated | Outcome::Error
        ) {
            tracing::info!(
                route,
                outcome = outcome.as_str(),
                status,
                reason = refusal.map(Rejection::reason),
                principal = subject.map(|s| s.principal.as_str()),
                action = subject.map(|s| s.action.as_str()),
                resource = subject.map(|s| s.resource.as_str()),
                policies = subject.map(|s| s.policies.join(",")),
                claimed_roles = subject
                    .filter(|s| !s.claimed_roles.is_empty())
                    .map(|s| s.claimed_roles.join(",")),
                decision_id,
                trace_id,
                elapsed_us = elapsed.as_micros() as u64,
                error = error.map(|e| e.to_string()),
                forwarded = outcome == Outcome::ShadowDenied,
                "request refused (forwarded when shadowed)"
            );
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                route,
                outcome = outcome.as_str(),
                status,
                principal = subject.map(|s| s.principal.as_str()),
                action = subject.map(|s| s.action.as_str()),
                resource = subject.map(|s| s.resource.as_str()),
                cached = subject.map(|s| s.cached),
                decision_id,
                trace_id,
                elapsed_us = elapsed.as_micros() as u64,
                "request"
            );
        }
    }
}
