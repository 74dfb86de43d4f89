//! The ops listener, apart from the data plane: `/livez` (the process answers), `/readyz`
//! and its alias `/healthz` (keys loaded, a snapshot in force, not shutting down; `?verbose`
//! lists each check), `/metrics` (Prometheus text format) and, with `identity_assertion`
//! on, `/.well-known/jwks.json` (the key upstreams verify the assertion with).
//!
//! Before `portcullis proxy` has its first state (the control plane or a last-known-good
//! file), [`Bootstrapping`] answers on the same address: `/livez` 200 at once, so a
//! liveness probe does not restart a sidecar that waits for its control plane, `/readyz`
//! 503 (a startup probe holds the app back), `/metrics`. It hands the address over just
//! before the listeners above start.

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
        encode_metrics(metrics)
    }
}

/// The ops address while the process waits for its first state.
#[derive(Debug)]
pub struct Bootstrapping {
    stop: tokio_util::sync::CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl Bootstrapping {
    /// Listens on `address` (on the current runtime) until [`Bootstrapping::stop`].
    pub async fn start(
        address: &str,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("ops.address: cannot listen on `{address}`: {e}"))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let served = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let (stream, _) = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    tokio::spawn(answer_while_bootstrapping(stream, Arc::clone(&metrics)));
                }
            }
        });
        Ok(Self { stop, served })
    }

    /// Stops listening and gives the address back.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.served.await;
    }
}

/// Answers one request (then closes): reads the request line, at most 8 KiB of head within
/// 5 s.
async fn answer_while_bootstrapping(
    mut stream: tokio::net::TcpStream,
    metrics: Arc<crate::metrics::Metrics>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let target = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let verbose = asks_verbose(query);
    let response = match path {
        "/livez" => text_response(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" | "/healthz" => text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            if verbose {
                b"[-] snapshot: waiting for the control plane or a last-known-good state\nnot ready\n"
                    .to_vec()
            } else {
                b"not ready\n".to_vec()
            },
        ),
        "/metrics" => encode_metrics(&metrics),
        _ => text_response(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    let mut bytes = format!(
        "HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        response.status(),
        response.body().len()
    )
    .into_bytes();
    for (name, value) in response.headers() {
        bytes.extend_from_slice(name.as_str().as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(response.body());
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

/// The metrics in Prometheus' text format.
fn encode_metrics(metrics: &crate::metrics::Metrics) -> Response<Vec<u8>> {
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

/// Whether a query string asks for `?verbose`.
fn asks_verbose(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "verbose" || p.starts_with("verbose="))
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
        let verbose = uri.query().is_some_and(asks_verbose);
        match uri.path() {
            "/livez" => text_response(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" | "/healthz" => self.readyz(verbose),
            "/metrics" => self.metrics(),
            // The key the identity assertion is signed with, for upstreams to verify it.
            "/.well-known/jwks.json" => match &self.plane.assertion {
                Some(asserter) => text_response(
                    StatusCode::OK,
                    "application/jwk-set+json",
                    asserter.jwks().to_vec(),
                ),
                None => text_response(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    b"identity_assertion is off\n".to_vec(),
                ),
            },
            _ => text_response(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
