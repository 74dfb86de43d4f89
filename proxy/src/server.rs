//! The Pingora server of the data plane: its listeners (HTTP, optional HTTPS, ops), its
//! runtime settings, and shutdown — SIGTERM turns `/readyz` to 503 and keeps serving for
//! `shutdown.drain_delay_seconds` so load balancers move away, then waits up to
//! `shutdown.grace_period_seconds` for the requests in flight, then closes the listeners.
//! (Pingora's own grace period, a plain sleep with a default of 300 s, is cut to one second:
//! the wait above already covers it and ends as soon as nothing is in flight.) SIGINT stops
//! at once.
//!
//! The ops listener starts only once the data plane's listeners are bound, so a `/readyz`
//! that answers 200 means the data port accepts connections (Pingora itself reports a
//! listening service ready before it binds).
//!
//! Pingora never sees the command line: it gets its configuration from ours.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::listening::Service;
use pingora::services::{
    Service as PingoraService, ServiceHandle, ServiceReadyNotifier, ServiceWithDependents,
};

use crate::head_deadline::HeadDeadline;

use crate::audit::Audit;
use crate::config::Config;
use crate::data_plane::authn::certificate::CaptureCertificate;
use crate::data_plane::proxy::EnforcingProxy;
use crate::data_plane::{DataPlane, Health};
use crate::ops::Ops;
use crate::process::Mode;
use crate::tls::ReloadingCert;

/// Fails early, with the address named, when a listener cannot bind (Pingora would only log).
pub fn check_binds(config: &Config, mode: Mode) -> Result<(), String> {
    let mut addresses = vec![("ops.address", config.ops.address.as_str())];
    if mode.serves_data_plane() {
        addresses.push(("listen.address", config.listen.address.as_str()));
        if let Some(tls) = &config.listen.tls {
            addresses.push(("listen.tls.address", tls.address.as_str()));
        }
    }
    if config.admin.enabled {
        addresses.push(("admin.address", config.admin.address.as_str()));
    }
    for (key, address) in addresses {
        std::net::TcpListener::bind(address)
            .map_err(|e| format!("{key}: cannot listen on `{address}`: {e}"))?;
    }
    Ok(())
}

/// Runs the listeners until shutdown: the ops listener always, the data plane when the mode
/// has one (`portcullis control` serves no data plane).
/// `audit`, when open, is counted in the metrics the ops listener serves.
pub fn run(
    config: &Config,
    plane: Arc<DataPlane>,
    cert: Option<Arc<ReloadingCert>>,
    audit: Option<Arc<Audit>>,
    mode: Mode,
) {
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(config.shutdown.runtime_timeout_seconds),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let data_plane = mode
        .serves_data_plane()
        .then(|| add_data_plane(&mut server, config, &plane, cert));

    let mut ops = Service::new(
        String::from("portcullis ops"),
        Ops::new(Arc::clone(&plane), audit),
    );
    ops.add_tcp(&config.ops.address);
    let ops = server.add_service(ops);
    if let Some(data_plane) = &data_plane {
        ops.add_dependency(data_plane);
    }

    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            health: Arc::clone(&plane.health),
            drain_delay: Duration::from_secs(config.shutdown.drain_delay_seconds),
            grace_period: Duration::from_secs(config.shutdown.grace_period_seconds),
        }),
    });
}

fn add_data_plane(
    server: &mut Server,
    config: &Config,
    plane: &Arc<DataPlane>,
    cert: Option<Arc<ReloadingCert>>,
) -> ServiceHandle {
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        EnforcingProxy::new(Arc::clone(plane)),
    );
    // Cleartext HTTP/2 with prior knowledge (h2c), beside HTTP/1.1: Pingora peeks at each
    // new plain connection for the HTTP/2 preface. Over TLS, ALPN chooses.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    app.server_options = Some(options);
    let mut proxy = Service::new(
        String::from("portcullis data plane"),
        HeadDeadline::new(
            app,
            Duration::from_millis(config.listen.request_head_timeout_ms),
            plane.metrics.request_head_timeouts.clone(),
        ),
    );
    proxy.add_tcp(&config.listen.address);
    if let (Some(tls), Some(cert)) = (&config.listen.tls, cert) {
        // The paths are only recorded; the resolver serves the certificate and follows
        // the files.
        let settings = match &tls.client_ca_file {
            None => pingora::listeners::tls::TlsSettings::intermediate(
                &tls.cert_file.display().to_string(),
                &tls.key_file.display().to_string(),
            )
            .map_err(|e| e.to_string()),
            // Verified client certificates: what they name is left on the connection.
            Some(ca_file) => {
                crate::tls::client_verifier(ca_file, tls.client_auth).and_then(|verifier| {
                    let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(
                        Box::new(CaptureCertificate {
                            mapping: config.auth.certificates.clone(),
                        }),
                    )
                    .map_err(|e| e.to_string())?;
                    settings.set_client_cert_verifier(verifier);
                    Ok(settings)
                })
            }
        };
        match settings {
            Ok(mut settings) => {
                settings.set_cert_resolver(cert);
                settings.enable_h2();
                proxy.add_tls_with_settings(&tls.address, None, settings);
            }
            Err(e) => tracing::error!(error = %e, "HTTPS listener not started"),
        }
    }
    server.add_service(BoundBeforeReady(proxy))
}

/// A listening service that tells the services depending on it that it is ready once all
/// its listeners are bound — Pingora's own listening services say so before binding. Pingora
/// records each listener it binds in the table of listening sockets (kept for graceful
/// upgrades), keyed by address: that record is the signal.
struct BoundBeforeReady<S>(S);

#[async_trait]
impl<S: PingoraService> ServiceWithDependents for BoundBeforeReady<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let addresses = self.0.listen_addresses().unwrap_or_default();
        let table = fds.clone();
        let bound = async move {
            let Some(table) = table else { return };
            while !addresses
                .iter()
                .all(|address| table.lock().get(address).is_some())
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let serve = self.0.start_service(fds, shutdown, listeners_per_fd);
        tokio::pin!(serve);
        tokio::select! {
            () = &mut serve => return,
            () = bound => ready.notify_ready(),
        }
        serve.await;
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn threads(&self) -> Option<usize> {
        self.0.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.0.listen_addresses()
    }
}

/// SIGTERM: drain, then shut down gracefully. SIGINT: shut down now. SIGQUIT: Pingora's
/// graceful upgrade.
struct Signals {
    health: Arc<Health>,
    drain_delay: Duration,
    grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!(
                "cannot install signal handlers; SIGTERM will stop the process at once"
            );
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                self.health.start_draining();
                tracing::info!(
                    drain_delay_s = self.drain_delay.as_secs(),
                    "SIGTERM: /readyz now answers 503; draining before closing listeners"
                );
                tokio::time::sleep(self.drain_delay).await;
                let deadline = tokio::time::Instant::now() + self.grace_period;
                while self.health.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tracing::info!(in_flight = self.health.in_flight(), "closing listeners");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                self.health.start_draining();
                tracing::info!("SIGINT: shutting down");
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        }
    }
}
