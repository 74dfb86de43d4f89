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
    },
    /// A JWKS document fixed at start.
    Fixed(Vec<u8>),
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
            } => poll_url(url, refresh, follow_redirects, loads).await,
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

async fn poll_url(url: String, refresh: Duration, follow_redirects: bool, loads: Loads) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(redirect_policy(follow_redirects))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the JWKS client; keys will not load");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        let loaded = match fetch(&client, &url).await {
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

/// Fetches the JWKS, reading the body chunk by chunk and giving up as soon as it passes
/// [`MAX_JWKS_BYTES`]: a hostile endpoint cannot make us buffer more.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
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
            fetch(&client(false), &url(keys)).await.unwrap(),
            JWKS.as_bytes()
        );
        assert_eq!(
            fetch(&client(false), &url(same_host)).await.unwrap_err(),
            "status 302 Found",
            "not followed by default"
        );
        assert_eq!(
            fetch(&client(true), &url(same_host)).await.unwrap(),
            JWKS.as_bytes()
        );
        assert_eq!(
            fetch(&client(true), &url(other_host)).await.unwrap_err(),
            "status 302 Found",
            "never to another host"
        );
    }

    #[tokio::test]
    async fn a_jwks_past_the_limit_is_refused_as_it_streams_in() {
        // Announced too large: refused before the body is read.
        let announced = answering(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{JWKS}",
            MAX_JWKS_BYTES + 1
        ))
        .await;
        let err = fetch(&client(false), &format!("http://{announced}/"))
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
        let err = fetch(&client(false), &format!("http://{addr}/"))
            .await
            .unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let sent = server.await.unwrap();
        assert!(sent < 16 << 20, "the server got to send {sent} bytes");
    }
}
