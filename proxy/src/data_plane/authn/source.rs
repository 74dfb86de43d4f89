//! Where verification keys come from, and the task that keeps them fresh: a JWKS file
//! (re-read when it changes), a JWKS URL (fetched at start, refreshed periodically and when a
//! token names an unknown `kid`), or fixed keys (the dev key of `serve`). A load that fails
//! keeps the keys in force and is counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_sinks::backoff::Backoff;

use super::Authenticator;
use super::keys::KeySet;
use crate::file_watch::FileWatch;

/// A source of keys.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS file.
    File(PathBuf),
    /// A JWKS URL.
    Url {
        /// The URL.
        url: String,
        /// Periodic refresh.
        refresh: Duration,
        /// Follow redirects (to the same host only, at most 3); otherwise a redirect is a
        /// failed fetch.
        follow_redirects: bool,
        /// How the endpoint is reached: its CA and a bearer token, when it wants them.
        access: JwksAccess,
    },
    /// A JWKS document fixed at start.
    Fixed(Vec<u8>),
}

/// What fetching a JWKS URL needs beside the URL, e.g. for a Kubernetes API server's
/// `/openid/v1/jwks`: the CAs its certificate chains to (instead of the system's), and a
/// file holding a bearer token, read again for every fetch (projected service-account
/// tokens rotate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksAccess {
    /// PEM CA certificates trusted for the endpoint; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A file with the bearer token sent with each fetch.
    pub token_file: Option<PathBuf>,
}

/// How often a JWKS file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(2);

impl KeySource {
    /// Loads the keys once, where that needs no network: file and fixed sources. Used at
    /// start so a broken file stops the process before it binds.
    pub fn load_local(&self) -> Result<Option<KeySet>, String> {
        let bytes = match self {
            Self::File(path) => std::fs::read(path)
                .map_err(|e| format!("`{}`: cannot read: {e}", path.display()))?,
            Self::Fixed(bytes) => bytes.clone(),
            Self::Url { .. } => return Ok(None),
        };
        let (keys, warnings) = KeySet::from_jwks(&bytes)?;
        for w in warnings {
            tracing::warn!(source = %self, "{w}");
        }
        Ok(Some(keys))
    }

    /// Keeps the keys of `authn`'s issuer `issuer` (its index in the settings) fresh for as
    /// long as it runs; counts each load in `refreshes` (`ok` or `error`).
    pub async fn run(
        self,
        authn: Arc<Authenticator>,
        issuer: usize,
        refreshes: prometheus::IntCounterVec,
    ) {
        let loads = Loads {
            authn,
            issuer,
            refreshes,
        };
        match self {
            Self::Fixed(_) => std::future::pending().await,
            Self::File(path) => watch_file(path, loads).await,
            Self::Url {
                url,
                refresh,
                follow_redirects,
                access,
            } => poll_url(url, refresh, follow_redirects, access, loads).await,
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url { url, .. } => f.write_str(url),
            Self::Fixed(_) => f.write_str("dev signing key"),
        }
    }
}

/// Where loaded keys go, and where loads are counted.
struct Loads {
    authn: Arc<Authenticator>,
    issuer: usize,
    refreshes: prometheus::IntCounterVec,
}

impl Loads {
    /// Installs the keys of a JWKS document, or keeps those in force when it is refused.
    fn install(&self, bytes: &[u8], source: &str) {
        match KeySet::from_jwks(bytes) {
            Ok((keys, warnings)) => {
                for w in warnings {
                    tracing::warn!(source, "{w}");
                }
                tracing::info!(source, keys = keys.len(), "JWKS loaded");
                self.authn.set_keys(self.issuer, keys);
                self.refreshes.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                self.failed();
                tracing::warn!(source, error = %e, "JWKS refused; keeping the keys in force");
            }
        }
    }

    fn failed(&self) {
        self.refreshes.with_label_values(&["error"]).inc();
    }
}

async fn watch_file(path: PathBuf, loads: Loads) {
    let mut watch = FileWatch::new(vec![path.clone()]);
    loop {
        tokio::select! {
            () = tokio::time::sleep(FILE_POLL) => {}
            () = loads.authn.refetch_requested(loads.issuer) => {}
        }
        if !watch.changed(vec![path.clone()]) {
            continue;
        }
        match tokio::fs::read(&path).await {
            Ok(bytes) => loads.install(&bytes, &path.display().to_string()),
            Err(e) => {
                loads.failed();
                tracing::warn!(path = %path.display(), error = %e, "JWKS file unreadable; keeping the keys in force");
            }
        }
    }
}

/// Redirects a JWKS fetch may follow: none, or (when configured) at most 3 to the host it
/// started on, so a compromised or misconfigured endpoint cannot send us to keys elsewhere.
fn redirect_policy(follow: bool) -> reqwest::redirect::Policy {
    if !follow {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(|attempt| {
        let same_host = attempt
            .previous()
            .first()
            .is_some_and(|first| first.host_str() == attempt.url().host_str());
        if attempt.previous().len() > 3 || !same_host {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// The HTTP client of a JWKS URL: a 5 s timeout, the redirect policy, and the CAs of
/// `access` instead of the system's when it names them.
fn jwks_client(follow_redirects: bool, access: &JwksAccess) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(redirect_policy(follow_redirects));
    if let Some(ca_file) = &access.ca_file {
        let pem = std::fs::read(ca_file)
            .map_err(|e| format!("`{}`: cannot read: {e}", ca_file.display()))?;
        let cas = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("`{}`: {e}", ca_file.display()))?;
        if cas.is_empty() {
            return Err(format!("`{}` holds no certificate", ca_file.display()));
        }
        builder = builder.tls_built_in_root_certs(false);
        for ca in cas {
            builder = builder.add_root_certificate(ca);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

async fn poll_url(
    url: String,
    refresh: Duration,
    follow_redirects: bool,
    access: JwksAccess,
    loads: Loads,
) {
    let client = match jwks_client(follow_redirects, &access) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url, error = %e, "cannot build the JWKS client; keys will not load");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        let loaded = match fetch(&client, &url, access.token_file.as_deref()).await {
            Ok(bytes) => {
                loads.install(&bytes, &url);
                true
            }
            Err(e) => {
                loads.failed();
                tracing::warn!(url, error = %e, "JWKS fetch failed; keeping the keys in force");
                false
            }
        };
        // Until the first success, retry with backoff; afterwards, on the refresh period or
        // when a token names an unknown `kid`.
        let wait = if loads.authn.has_keys_of(loads.issuer) && loaded {
            backoff.reset();
            refresh
        } else if loads.authn.has_keys_of(loads.issuer) {
            refresh.min(Duration::from_secs(30))
        } else {
            backoff.next_delay()
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = loads.authn.refetch_requested(loads.issuer) => {}
        }
    }
}

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Fetches the JWKS, with the bearer token of `token_file` when given (read anew each
/// time), reading the body chunk by chunk and giving up as soon as it passes
/// [`MAX_JWKS_BYTES`]: a hostile endpoint cannot make us buffer more.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token_file: Option<&std::path::Path>,
) -> Result<Vec<u8>, String> {
    let mut request = client.get(url);
    if let Some(token_file) = token_file {
        let token = tokio::fs::read_to_string(token_file)
            .await
            .map_err(|e| format!("`{}`: cannot read the token: {e}", token_file.display()))?;
        request = request.bearer_auth(token.trim());
    }
    let mut response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let too_large = || format!("JWKS document larger than {MAX_JWKS_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A real HTTP server on loopback answering every request with `response`.
    async fn answering(response: String) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = [0_u8; 4096];
                    let _read = stream.read(&mut request).await;
                    let _written = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn client(follow: bool) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(redirect_policy(follow))
            .build()
            .unwrap()
    }

    const JWKS: &str = r#"{"keys":[]}"#;

    fn redirect_to(location: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
    }

    #[tokio::test]
    async fn redirects_are_refused_unless_asked_and_never_lead_to_another_host() {
        let keys = answering(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{JWKS}",
            JWKS.len()
        ))
        .await;
        let same_host =
            answering(redirect_to(&format!("http://127.0.0.1:{}/k", keys.port()))).await;
        let other_host =
            answering(redirect_to(&format!("http://localhost:{}/k", keys.port()))).await;
        let url = |addr: SocketAddr| format!("http://{addr}/jwks.json");

        assert_eq!(
            fetch(&client(false), &url(keys), None).await.unwrap(),
            JWKS.as_bytes()
        );
        assert_eq!(
            fetch(&client(false), &url(same_host), None)
                .await
                .unwrap_err(),
            "status 302 Found",
            "not followed by default"
        );
        assert_eq!(
            fetch(&client(true), &url(same_host), None).await.unwrap(),
            JWKS.as_bytes()
        );
        assert_eq!(
            fetch(&client(true), &url(other_host), None)
                .await
                .unwrap_err(),
            "status 302 Found",
            "never to another host"
        );
    }

    #[tokio::test]
    async fn a_jwks_behind_a_private_ca_is_fetched_with_its_bearer_token() {
        use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};
        pingora::tls::install_default_crypto_provider();
        let server = rcgen::generate_simple_self_signed(vec![String::from("127.0.0.1")]).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "portcullis-jwks-access-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_file, token_file, empty) =
            (dir.join("ca.pem"), dir.join("token"), dir.join("empty.pem"));
        std::fs::write(&ca_file, server.cert.pem()).unwrap();
        std::fs::write(&token_file, "sa-token-1\n").unwrap();
        std::fs::write(&empty, "").unwrap();

        // A real HTTPS endpoint that answers with the JWKS and hands over each request.
        let key = PrivateKeyDer::try_from(server.key_pair.serialize_der()).unwrap();
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(server.cert.der().to_vec())], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, mut requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = [0_u8; 4096];
                    let n = tls.read(&mut request).await.unwrap_or(0);
                    let _sent = seen.send(String::from_utf8_lossy(&request[..n]).to_lowercase());
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                        JWKS.len()
                    );
                    let _written = tls.write_all(response.as_bytes()).await;
                    let _closed = tls.shutdown().await;
                });
            }
        });
        let url = format!("https://{addr}/openid/v1/jwks");

        let access = JwksAccess {
            ca_file: Some(ca_file),
            token_file: Some(token_file.clone()),
        };
        let client = jwks_client(false, &access).unwrap();
        assert_eq!(
            fetch(&client, &url, Some(&token_file)).await.unwrap(),
            JWKS.as_bytes()
        );
        let request = requests.recv().await.unwrap();
        assert!(
            request.contains("authorization: bearer sa-token-1\r\n"),
            "{request}"
        );
        // The token file is read again for every fetch (projected tokens rotate).
        std::fs::write(&token_file, "sa-token-2").unwrap();
        fetch(&client, &url, Some(&token_file)).await.unwrap();
        assert!(requests.recv().await.unwrap().contains("bearer sa-token-2"));

        // Without the CA, the system's roots do not vouch for it.
        let system = jwks_client(false, &JwksAccess::default()).unwrap();
        assert!(fetch(&system, &url, None).await.is_err());
        let refused = jwks_client(
            false,
            &JwksAccess {
                ca_file: Some(empty),
                token_file: None,
            },
        )
        .unwrap_err();
        assert!(refused.contains("holds no certificate"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_jwks_past_the_limit_is_refused_as_it_streams_in() {
        // Announced too large: refused before the body is read.
        let announced = answering(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{JWKS}",
            MAX_JWKS_BYTES + 1
        ))
        .await;
        let err = fetch(&client(false), &format!("http://{announced}/"), None)
            .await
            .unwrap_err();
        assert!(err.contains("larger than"), "{err}");

        // Not announced (chunked) and without end: reading stops just past the limit, and
        // the server sees the connection go while it still has most of its 64 MiB to send.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0_u8; 4096];
            let _read = stream.read(&mut request).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
            let mut sent = 0_usize;
            while sent < 64 << 20 {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                sent += 0x10000;
            }
            sent
        });
        let err = fetch(&client(false), &format!("http://{addr}/"), None)
            .await
            .unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let sent = server.await.unwrap();
        assert!(sent < 16 << 20, "the server got to send {sent} bytes");
    }
}
