//! Where verification keys come from, and the task that keeps them fresh: a JWKS file
//! (re-read when it changes), a JWKS URL (fetched at start, refreshed periodically and when a
//! token names an unknown `kid`), or fixed keys (the dev key of `serve`). A load that fails
//! keeps the keys in force and is counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Authenticator;
use super::keys::KeySet;
use crate::metrics::METRICS;

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

    /// Keeps `authn`'s keys fresh until `shutdown` resolves.
    pub async fn run(self, authn: Arc<Authenticator>) {
        match self {
            Self::Fixed(_) => std::future::pending().await,
            Self::File(path) => watch_file(path, authn).await,
            Self::Url { url, refresh } => poll_url(url, refresh, authn).await,
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

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn watch_file(path: PathBuf, authn: Arc<Authenticator>) {
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(FILE_POLL) => {}
            () = authn.refetch_requested() => {}
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match tokio::fs::read(&path).await {
            Ok(bytes) => install(&authn, &bytes, &path.display().to_string()),
            Err(e) => {
                METRICS.jwks_refreshes.with_label_values(&["error"]).inc();
                tracing::warn!(path = %path.display(), error = %e, "JWKS file unreadable; keeping the keys in force");
            }
        }
    }
}

fn install(authn: &Authenticator, bytes: &[u8], source: &str) {
    match KeySet::from_jwks(bytes) {
        Ok((keys, warnings)) => {
            for w in warnings {
                tracing::warn!(source, "{w}");
            }
            tracing::info!(source, keys = keys.len(), "JWKS loaded");
            authn.set_keys(keys);
            METRICS.jwks_refreshes.with_label_values(&["ok"]).inc();
        }
        Err(e) => {
            METRICS.jwks_refreshes.with_label_values(&["error"]).inc();
            tracing::warn!(source, error = %e, "JWKS refused; keeping the keys in force");
        }
    }
}

async fn poll_url(url: String, refresh: Duration, authn: Arc<Authenticator>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the JWKS client; keys will not load");
            return;
        }
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let loaded = match fetch(&client, &url).await {
            Ok(bytes) => {
                install(&authn, &bytes, &url);
                true
            }
            Err(e) => {
                METRICS.jwks_refreshes.with_label_values(&["error"]).inc();
                tracing::warn!(url, error = %e, "JWKS fetch failed; keeping the keys in force");
                false
            }
        };
        // Until the first success, retry with backoff; afterwards, on the refresh period or
        // when a token names an unknown `kid`.
        let wait = if authn.has_keys() && loaded {
            backoff = Duration::from_millis(250);
            refresh
        } else if authn.has_keys() {
            refresh.min(Duration::from_secs(30))
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(30));
            backoff
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = authn.refetch_requested() => {}
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > 1 << 20 {
        return Err(String::from("JWKS document larger than 1 MiB"));
    }
    Ok(bytes.to_vec())
}
