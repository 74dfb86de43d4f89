//! How `portcullis proxy` gets its state from a control plane: bootstrap from
//! `GET /v1/snapshot`, then poll `GET /v1/updates?since=R` and apply each patch; keep the
//! whole state as a last-known-good file (written atomically), and start from that file
//! when the control plane cannot be reached.
//!
//! Contact is tracked: past `control_plane.max_staleness_seconds` without reaching the
//! control plane, the data plane fails closed (503) and `/readyz` says why, until contact
//! comes back. A short outage changes nothing else: the last state keeps being enforced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use portcullis_policy_store::snapshot::{Snapshot, SnapshotHandle, SnapshotUpdate, StoreState};

use crate::metrics::METRICS;

/// When the control plane was last reached, and how stale is too stale.
#[derive(Debug)]
pub struct Contact {
    last_ms: AtomicI64,
    max_staleness: Duration,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Contact {
    /// Contact tracking with a staleness limit; the state was last known current at
    /// `confirmed_ms`.
    pub fn new(max_staleness: Duration, confirmed_ms: i64) -> Self {
        Self {
            last_ms: AtomicI64::new(confirmed_ms),
            max_staleness,
        }
    }

    fn reached(&self) {
        self.last_ms.store(now_ms(), Ordering::Release);
    }

    /// Seconds since the control plane was last reached.
    pub fn age_seconds(&self) -> f64 {
        (now_ms() - self.last_ms.load(Ordering::Acquire)).max(0) as f64 / 1000.0
    }

    /// Whether the state is older than allowed.
    pub fn is_stale(&self) -> bool {
        self.age_seconds() > self.max_staleness.as_secs_f64()
    }
}

/// A control-plane client.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl ControlPlane {
    /// A client for `base` (e.g. `http://127.0.0.1:8482`) with a bearer token.
    pub fn new(base: &str, token: String) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("cannot build the control-plane client: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client,
        })
    }

    async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => Ok(Some(
                response.bytes().await.map_err(|e| e.to_string())?.to_vec(),
            )),
            204 => Ok(None),
            status => Err(format!("{path}: status {status}")),
        }
    }

    /// The whole state.
    pub async fn snapshot(&self) -> Result<StoreState, String> {
        let bytes = self
            .get("/v1/snapshot")
            .await?
            .ok_or_else(|| String::from("/v1/snapshot: empty answer"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("/v1/snapshot: {e}"))
    }

    /// What changed since `revision`; `None` when nothing did.
    pub async fn updates(&self, revision: i64) -> Result<Option<SnapshotUpdate>, String> {
        match self.get(&format!("/v1/updates?since={revision}")).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("/v1/updates: {e}")),
        }
    }
}

/// Writes the last-known-good state: to a temporary file, then renamed over the old one.
pub fn save(path: &Path, state: &StoreState) -> Result<(), String> {
    let json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            format!(
                "`{}`: cannot write the last-known-good state: {e}",
                path.display()
            )
        })
}

/// Reads the last-known-good state.
pub fn load(path: &Path) -> Result<StoreState, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("`{}`: {e}", path.display()))
}

/// When the file's state was last confirmed current: its modification time, which every
/// successful poll refreshes.
fn confirmed_at(file: &Path) -> i64 {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// Marks the file's state as confirmed current now.
fn touch(file: &Path) {
    let touched = std::fs::File::options()
        .write(true)
        .open(file)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(error = %e, "last-known-good file not touched");
    }
}

/// The first state and when it was last known current: from the control plane if it
/// answers (saved as last-known-good), else from the last-known-good file (current as of
/// its last confirmation, so staleness keeps counting across restarts), else retried with
/// backoff until one of them works.
pub async fn bootstrap(control: &ControlPlane, file: &Path) -> (StoreState, i64) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match control.snapshot().await {
            Ok(state) => {
                if let Err(e) = save(file, &state) {
                    tracing::warn!(error = %e, "last-known-good state not saved");
                }
                tracing::info!(
                    revision = state.revision,
                    "bootstrapped from the control plane"
                );
                return (state, now_ms());
            }
            Err(e) if file.exists() => match load(file) {
                Ok(state) => {
                    tracing::warn!(
                        error = %e,
                        file = %file.display(),
                        revision = state.revision,
                        "control plane unreachable: serving the last-known-good state"
                    );
                    return (state, confirmed_at(file));
                }
                Err(load_error) => {
                    tracing::error!(error = %e, file_error = %load_error, "no state to serve yet; retrying");
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "control plane unreachable and no last-known-good state; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Follows the control plane until the process ends: polls for updates, applies them,
/// keeps the last-known-good file current, tracks contact.
pub async fn follow(
    control: ControlPlane,
    mut state: StoreState,
    handle: Arc<SnapshotHandle>,
    file: PathBuf,
    contact: Arc<Contact>,
    interval: Duration,
) {
    let mut failures: u32 = 0;
    // A refused update is not retried until the control plane moves past it.
    let mut refused: Option<i64> = None;
    loop {
        let wait = if failures == 0 {
            interval
        } else {
            (interval * 2_u32.saturating_pow(failures.min(6))).min(Duration::from_secs(10))
        };
        tokio::time::sleep(wait).await;
        let revision = handle.load().revision();
        let update = match control.updates(revision).await {
            Ok(u) => {
                contact.reached();
                touch(&file);
                if failures > 0 {
                    tracing::info!("control plane reachable again");
                }
                failures = 0;
                u
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, stale_s = contact.age_seconds(), "control plane unreachable; enforcing the last state");
                }
                continue;
            }
        };
        let Some(update) = update else {
            continue;
        };
        let target = match &update {
            SnapshotUpdate::Patch(delta) => delta.revision,
            SnapshotUpdate::Rebuild(state) => state.revision,
        };
        if refused == Some(target) {
            continue;
        }
        match handle.apply(update.clone(), now_ms()) {
            Ok(applied) => {
                METRICS
                    .snapshot_updates
                    .with_label_values(&["applied"])
                    .inc();
                state.apply(update);
                if let Err(e) = save(&file, &state) {
                    tracing::warn!(error = %e, "last-known-good state not saved");
                }
                tracing::info!(
                    revision = applied,
                    "snapshot updated from the control plane"
                );
            }
            Err(e) => {
                refused = Some(target);
                METRICS
                    .snapshot_updates
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(error = %e, revision = target, "control-plane update refused; keeping the snapshot in force");
            }
        }
    }
}

/// Builds the snapshot of a state.
pub fn build(state: StoreState) -> Result<Snapshot, String> {
    Snapshot::build(state, now_ms()).map_err(|e| format!("the state does not compile: {e}"))
}
