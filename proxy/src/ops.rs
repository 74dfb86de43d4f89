//! The ops listener, apart from the data plane: `/livez` (the process answers), `/readyz`
//! and its alias `/healthz` (keys loaded, a snapshot in force, not shutting down; `?verbose`
//! lists each check) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::Encoder;

use crate::audit::Audit;
use crate::data_plane::DataPlane;

/// The ops HTTP app.
#[derive(Debug)]
pub struct Ops {
    plane: Arc<DataPlane>,
    audit: Option<Arc<Audit>>,
}

impl Ops {
    /// Ops over the data plane's state and metrics, and the audit ledger's counts.
    pub fn new(plane: Arc<DataPlane>, audit: Option<Arc<Audit>>) -> Self {
        Self { plane, audit }
    }

    /// Each readiness check: name, passed, detail.
    fn checks(&self) -> Vec<(&'static str, bool, String)> {
        let snapshot = self.plane.snapshot.load();
        let age_s = age_seconds(snapshot.built_at());
        vec![
            (
                "keys",
                self.plane.authn.has_keys(),
                String::from("token verification keys loaded"),
            ),
            (
                "snapshot",
                true,
                format!(
                    "revision {}, policy version {}, {} policies, updated {age_s:.0} s ago",
                    snapshot.revision(),
                    snapshot.policy_version(),
                    snapshot.counts().policies
                ),
            ),
            (
                "routes",
                !self.plane.gate.load().routes.is_empty(),
                format!("{} routes", self.plane.gate.load().routes.len()),
            ),
            (
                "control plane",
                !self.plane.contact.as_ref().is_some_and(|c| c.is_stale()),
                match &self.plane.contact {
                    Some(c) => format!("last reached {:.0} s ago", c.age_seconds()),
                    None => String::from("the store itself (serve, control)"),
                },
            ),
            (
                "shutdown",
                !self.plane.health.is_draining(),
                String::from(if self.plane.health.is_draining() {
                    "draining"
                } else {
                    "serving"
                }),
            ),
        ]
    }

    fn readyz(&self, verbose: bool) -> Response<Vec<u8>> {
        let checks = self.checks();
        let ready = checks.iter().all(|(_, ok, _)| *ok);
        let body = if verbose {
            let mut text = String::new();
            for (name, ok, detail) in &checks {
                text.push_str(&format!(
                    "[{}] {name}: {detail}\n",
                    if *ok { "+" } else { "-" }
                ));
            }
            text.push_str(if ready { "ready\n" } else { "not ready\n" });
            text
        } else {
            String::from(if ready { "ready\n" } else { "not ready\n" })
        };
        text_response(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "text/plain; charset=utf-8",
            body.into_bytes(),
        )
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let metrics = &self.plane.metrics;
        let snapshot = self.plane.snapshot.load();
        metrics.snapshot_revision.set(snapshot.revision());
        metrics.snapshot_age.set(age_seconds(snapshot.built_at()));
        if let Some(audit) = &self.audit {
            audit.export_metrics(metrics);
        }
        let encoder = prometheus::TextEncoder::new();
        let mut body = Vec::with_capacity(16 * 1024);
        match encoder.encode(&metrics.gather(), &mut body) {
            Ok(()) => text_response(StatusCode::OK, encoder.format_type(), body),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    b"metrics unavailable\n".to_vec(),
                )
            }
        }
    }
}

fn age_seconds(built_at_ms: i64) -> f64 {
    let now = jiff::Timestamp::now().as_millisecond();
    (now.saturating_sub(built_at_ms)).max(0) as f64 / 1000.0
}

fn text_response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[async_trait]
impl ServeHttp for Ops {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = &session.req_header().uri;
        let verbose = uri.query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        });
        match uri.path() {
            "/livez" => text_response(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" | "/healthz" => self.readyz(verbose),
            "/metrics" => self.metrics(),
            _ => text_response(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
