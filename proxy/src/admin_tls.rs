//! The admin listener over TLS (`admin.tls`) — what sidecars follow and the Kubernetes API
//! server calls in a cluster: rustls with a certificate that follows its files
//! ([`ReloadingCert`]), client certificates verified when configured, and handshakes run
//! beside the accept loop (a slow or silent client holds only its own task, for at most
//! [`HANDSHAKE_TIMEOUT`], and at most [`MAX_HANDSHAKES`] run at once), handed to axum as a
//! [`Listener`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use pingora::tls::{ServerConfig, ServerTlsStream, TlsAcceptor};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::AdminTlsConfig;
use crate::tls::ReloadingCert;

/// The longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

/// The rustls settings of the admin listener: `cert`'s certificate, HTTP/1.1, and the
/// client verifier `tls` asks for. Errors name the setting.
pub fn server_config(
    tls: &AdminTlsConfig,
    cert: Arc<ReloadingCert>,
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => builder.with_client_cert_verifier(
            crate::tls::client_verifier(ca_file, tls.client_auth)
                .map_err(|e| format!("admin.tls.client_ca_file: {e}"))?,
        ),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Connections that finished their handshake, in the order they did.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(ServerTlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and runs each handshake with `config` on a task of its own, until
    /// `stop`.
    pub fn start(tcp: TcpListener, config: Arc<ServerConfig>, stop: CancellationToken) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (done, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            tracing::warn!(error = %e, "admin listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(client = %peer, error = %e, "admin listener: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::info!(client = %peer, "admin listener: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl Listener for TlsListener {
    type Io = ServerTlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // Stopped: the server's own shutdown signal ends it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `router` on `listener` until `stop`, with each request knowing its peer's address
/// (the throttle of failed authentications reads it).
pub async fn serve<L>(listener: L, router: axum::Router, stop: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener.tap_io(|_| {}), service)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the admin API stopped");
    }
}
