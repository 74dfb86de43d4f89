//! How `portcullis proxy` gets its state from a control plane: bootstrap from
//! `GET /v1/snapshot`, then follow `GET /v1/watch?since=R` (server-sent events: each update
//! as the control plane publishes it, heartbeats between) and apply each update; reconnect
//! with a jittered backoff of at most a second when the stream breaks or falls silent. The
//! whole state is kept as a sealed last-known-good file ([`LastKnownGood`], written
//! atomically), to start from when the control plane cannot be reached. It is written by a
//! thread of its own ([`Keeper`]), never on the async runtime: an update is written as soon
//! as the writer is free, and the updates that arrive while it writes go out together in
//! the next write, not one whole-state write each.
//!
//! The control plane is reached over TLS as configured ([`client`]); the token is re-read
//! when its file changes, and the last-known-good file sealed again under it
//! ([`watch_token`]).
//!
//! In cached state mode ([`ControlPlane::shared_part_only`]) it follows the shared part of
//! the state; what each update names as changed outside it (users, services, entities of
//! types not held) is evicted from the [`StateCache`], and a rebuild empties it. An update
//! holding other entity types than the snapshot (the control plane's `held_entity_types`
//! changed) is not patched in: the shared part is bootstrapped anew.
//!
//! Contact is tracked: every event counts. Past `control_plane.max_staleness_seconds`
//! without one, the data plane fails closed (503) and `/readyz` says why, until contact
//! comes back. A short outage changes nothing else: the last state keeps being enforced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use portcullis_engine::snapshot::{
    Snapshot, SnapshotError, SnapshotHandle, SnapshotUpdate, StateSlice, StoreState,
};
use portcullis_model::{EntityRef, PrincipalKind};
use portcullis_sinks::backoff::Backoff;

use crate::data_plane::staleness::{Contact, now_ms};
use crate::state_cache::StateCache;

/// A control-plane client.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    base: String,
    /// Swapped when the token file changes ([`watch_token`]).
    token: Arc<ArcSwap<String>>,
    client: reqwest::Client,
    /// Follows the shared part of the state only (cached state mode).
    shared: bool,
}

/// The HTTP client a sidecar reaches its control plane with: rustls; the control plane's
/// certificate verified against `ca_file` when given (instead of the public roots); the
/// client certificate presented when given. Errors name the setting and the file.
pub fn client(cp: &crate::config::ControlPlaneConfig) -> Result<reqwest::Client, String> {
    let read = |at: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("{at}: `{}`: {e}", path.display()))
    };
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(3));
    if let Some(ca_file) = &cp.ca_file {
        let pem = read("control_plane.ca_file", ca_file)?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("control_plane.ca_file: `{}`: {e}", ca_file.display()))?;
        if roots.is_empty() {
            return Err(format!(
                "control_plane.ca_file: `{}` holds no certificate",
                ca_file.display()
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    if let (Some(cert), Some(key)) = (&cp.client_cert_file, &cp.client_key_file) {
        let mut pem = read("control_plane.client_cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("control_plane.client_key_file", key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("control_plane.client_cert_file: `{}`: {e}", cert.display()))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the control-plane client: {e}"))
}

impl ControlPlane {
    /// A client for `base` (e.g. `https://portcullis-control:8482`) with a bearer token,
    /// over `client` (see [`client`]).
    pub fn new(base: &str, token: String, client: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: Arc::new(ArcSwap::from_pointee(token)),
            client,
            shared: false,
        }
    }

    /// Follows only the shared part of the state (`view=shared`: cached state mode); users,
    /// services and entities of types it leaves out are fetched one at a time
    /// ([`Self::slice`]).
    #[must_use]
    pub fn shared_part_only(mut self) -> Self {
        self.shared = true;
        self
    }

    /// One principal with its assignments, or one entity, as the control plane's snapshot
    /// holds it.
    pub async fn slice(&self, key: &EntityRef) -> Result<StateSlice, String> {
        let (path, segment) = match PrincipalKind::from_cedar_type(key.type_name()) {
            Some(PrincipalKind::User) => ("principals", "users"),
            Some(PrincipalKind::Service) => ("principals", "services"),
            Some(PrincipalKind::Group) => ("principals", "groups"),
            None => ("entities", key.type_name()),
        };
        let path = format!("/v1/snapshot/{path}");
        let mut url =
            reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| e.to_string())?;
        url.path_segments_mut()
            .map_err(|()| String::from("the control-plane URL cannot take a path"))?
            .push(segment)
            .push(key.id());
        let response = self
            .client
            .get(url)
            .bearer_auth(self.token.load().as_str())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("{path}: status {status}"));
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        let slice: StateSlice =
            serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?;
        if !slice.is_of(key) {
            return Err(format!("{path}: asked for `{key}`, answered another"));
        }
        Ok(slice)
    }

    async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.load().as_str())
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
        let path = if self.shared {
            "/v1/snapshot?view=shared"
        } else {
            "/v1/snapshot"
        };
        let bytes = self
            .get(path)
            .await?
            .ok_or_else(|| String::from("/v1/snapshot: empty answer"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("/v1/snapshot: {e}"))
    }

    /// Opens the change stream from `revision`, asking for a heartbeat every `heartbeat`.
    async fn watch(&self, revision: i64, heartbeat: Duration) -> Result<reqwest::Response, String> {
        let mut path = format!(
            "/v1/watch?since={revision}&heartbeat_ms={}",
            heartbeat.as_millis()
        );
        if self.shared {
            path.push_str("&view=shared");
        }
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.load().as_str())
            // The stream has no end: only connecting is timed; silence is watched below.
            .timeout(Duration::from_secs(60 * 60 * 24 * 365))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => Ok(response),
            status => Err(format!("{path}: status {status}")),
        }
    }
}

/// The last-known-good file: the state as the control plane served it, sealed with an
/// HMAC-SHA256 under a key derived from the proxy's control-plane token, written with mode
/// 0600. A file edited by hand (a suspended user made active again while the control plane
/// is away), cut, or sealed under another token is refused like a corrupt one: the proxy
/// then waits for the control plane instead. The file's modification time says when its
/// state was last confirmed current.
///
/// Format: a first line `portcullis-lkg-v1 <hex HMAC of the rest>`, then the state's JSON.
#[derive(Clone)]
pub struct LastKnownGood {
    path: PathBuf,
    mac: HmacSha256,
}

impl std::fmt::Debug for LastKnownGood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastKnownGood")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The first line's tag.
const LKG_FORMAT: &str = "portcullis-lkg-v1";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl LastKnownGood {
    /// The file at `path`, sealed under a key derived from `token`.
    pub fn new(path: PathBuf, token: &str) -> Result<Self, String> {
        use hmac::Mac;
        use sha2::Digest;
        let key = sha2::Sha256::digest(
            [b"portcullis-last-known-good\n".as_slice(), token.as_bytes()].concat(),
        );
        let mac =
            HmacSha256::new_from_slice(&key).map_err(|e| format!("last-known-good seal: {e}"))?;
        Ok(Self { path, mac })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the state: to a temporary file (mode 0600), then renamed over the old one.
    pub fn save(&self, state: &StoreState) -> Result<(), String> {
        use hmac::Mac;
        use std::io::Write;
        let json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        let mut mac = self.mac.clone();
        mac.update(&json);
        let seal = portcullis_ledger::hex::hex(&mac.finalize().into_bytes());
        let tmp = self.path.with_extension("tmp");
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            // A temporary file left by an earlier crash keeps its mode: set it again.
            #[cfg(unix)]
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            file.write_all(format!("{LKG_FORMAT} {seal}\n").as_bytes())?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        written.map_err(|e| {
            format!(
                "`{}`: cannot write the last-known-good state: {e}",
                self.path.display()
            )
        })
    }

    /// Reads the state, refusing a file whose seal does not verify.
    pub fn load(&self) -> Result<StoreState, String> {
        use hmac::Mac;
        let at = |what: &str| format!("`{}`: {what}", self.path.display());
        let bytes = std::fs::read(&self.path).map_err(|e| at(&e.to_string()))?;
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| at("not a sealed last-known-good file"))?;
        let (head, json) = bytes.split_at(newline);
        let json = json.get(1..).unwrap_or_default();
        let seal = std::str::from_utf8(head)
            .ok()
            .and_then(|h| h.strip_prefix(LKG_FORMAT))
            .and_then(|h| h.strip_prefix(' '))
            .and_then(portcullis_ledger::hex::decode)
            .ok_or_else(|| at("not a sealed last-known-good file"))?;
        let mut mac = self.mac.clone();
        mac.update(json);
        mac.verify_slice(&seal).map_err(|_| {
            at("the seal does not verify: the file was changed, or sealed under another token")
        })?;
        serde_json::from_slice(json).map_err(|e| at(&e.to_string()))
    }

    /// When the file's state was last confirmed current: its modification time, which
    /// every successful poll refreshes.
    fn confirmed_at(&self) -> i64 {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0)
    }

    /// Marks the file's state as confirmed current now.
    fn touch(&self) {
        let touched = std::fs::File::options()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!(error = %e, "last-known-good file not touched");
        }
    }
}

/// The first state and when it was last known current: from the control plane if it
/// answers (saved as last-known-good), else from the last-known-good file (current as of
/// its last confirmation, so staleness keeps counting across restarts), else retried with
/// backoff until one of them works.
pub async fn bootstrap(control: &ControlPlane, file: &LastKnownGood) -> (StoreState, i64) {
    let mut backoff = Backoff::reconnect();
    loop {
        match control.snapshot().await {
            Ok(state) => {
                if let Err(e) = file.save(&state) {
                    tracing::warn!(error = %e, "last-known-good state not saved");
                }
                tracing::info!(
                    revision = state.revision,
                    "bootstrapped from the control plane"
                );
                return (state, now_ms());
            }
            Err(e) if file.path().exists() => match file.load() {
                Ok(state) => {
                    tracing::warn!(
                        error = %e,
                        file = %file.path().display(),
                        revision = state.revision,
                        "control plane unreachable: serving the last-known-good state"
                    );
                    return (state, file.confirmed_at());
                }
                Err(load_error) => {
                    tracing::error!(error = %e, file_error = %load_error, "no state to serve yet; retrying");
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "control plane unreachable and no last-known-good state; retrying")
            }
        }
        backoff.wait().await;
    }
}

/// Where the follower applies updates: the snapshot and, in cached state mode, the state
/// cache (evictions).
#[derive(Debug)]
pub struct Applier {
    /// The snapshot in force.
    pub handle: Arc<SnapshotHandle>,
    /// Cached state mode: the users, services and entities held apart.
    pub cache: Option<Arc<StateCache>>,
}

/// Follows the control plane until the process ends: streams updates and applies them,
/// keeps the last-known-good file current, tracks contact, reconnects with backoff;
/// counts each update applied or refused in `updates` (by outcome).
pub async fn follow(
    control: ControlPlane,
    applier: Applier,
    keeper: Keeper,
    contact: Arc<Contact>,
    heartbeat: Duration,
    updates: prometheus::IntCounterVec,
) {
    let Applier { handle, cache } = applier;
    let mut follower = Follower {
        handle,
        cache,
        keeper,
        contact,
        updates,
        refused: None,
        bootstrap_due: false,
    };
    let mut failures: u32 = 0;
    let mut backoff = Backoff::reconnect();
    loop {
        if follower.bootstrap_due {
            match control.snapshot().await {
                Ok(state) => {
                    follower.bootstrap_due = false;
                    follower.apply(SnapshotUpdate::Rebuild(state)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the shared part could not be bootstrapped anew; retrying")
                }
            }
        }
        let revision = follower.handle.load().revision();
        let outcome = match control.watch(revision, heartbeat).await {
            Ok(response) => {
                if failures > 0 {
                    tracing::info!("control plane reachable again");
                }
                failures = 0;
                backoff.reset();
                follower.stream(response, heartbeat).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(20) {
                tracing::warn!(error = %e, stale_s = follower.contact.age_seconds(), "control plane unreachable; enforcing the last state");
            }
        }
        backoff.wait().await;
    }
}

/// What the follower keeps between streams.
struct Follower {
    handle: Arc<SnapshotHandle>,
    cache: Option<Arc<StateCache>>,
    keeper: Keeper,
    contact: Arc<Contact>,
    /// `portcullis_snapshot_updates_total`.
    updates: prometheus::IntCounterVec,
    /// A refused update is not retried until the control plane moves past it.
    refused: Option<i64>,
    /// The stream holds other entity types than the snapshot: the state is fetched whole
    /// before the stream is read again.
    bootstrap_due: bool,
}

impl Follower {
    /// Reads one stream until it ends, breaks or stays silent for three heartbeats.
    async fn stream(
        &mut self,
        response: reqwest::Response,
        heartbeat: Duration,
    ) -> Result<(), String> {
        let mut events = response.bytes_stream().eventsource();
        loop {
            let event = tokio::time::timeout(heartbeat * 3, events.next())
                .await
                .map_err(|_| String::from("the change stream fell silent"))?
                .ok_or_else(|| String::from("the control plane closed the change stream"))?
                .map_err(|e| format!("the change stream broke: {e}"))?;
            self.contact.reached();
            self.keeper.send(Keep::Confirm);
            if event.event == "update" {
                let update: SnapshotUpdate = serde_json::from_str(&event.data)
                    .map_err(|e| format!("/v1/watch: an update that does not parse: {e}"))?;
                self.apply(update).await;
                if self.bootstrap_due {
                    return Err(String::from(
                        "the control plane holds other entity types: bootstrapping anew",
                    ));
                }
            }
        }
    }

    async fn apply(&mut self, update: SnapshotUpdate) {
        let target = update.revision();
        // Evictions first, and whether or not the rest compiles: evicting is always safe.
        if let Some(cache) = &self.cache {
            match &update {
                SnapshotUpdate::Rebuild(state) => {
                    tracing::info!(
                        revision = state.revision,
                        "the state was rebuilt: everything cached evicted"
                    );
                    cache.clear(state.revision);
                }
                SnapshotUpdate::Patch(delta) => {
                    cache.evict(&delta.invalidated, delta.revision).await
                }
            }
        }
        if self.refused == Some(target) {
            return;
        }
        match self.handle.apply(update.clone(), now_ms()) {
            Ok(applied) => {
                self.updates.with_label_values(&["applied"]).inc();
                self.keeper.send(Keep::Apply(Box::new(update)));
                tracing::info!(
                    revision = applied,
                    "snapshot updated from the control plane"
                );
            }
            Err(e @ SnapshotError::HeldTypesChanged { .. }) => {
                tracing::warn!(error = %e, revision = target, "the control plane now holds other entity types; bootstrapping anew");
                self.bootstrap_due = true;
            }
            Err(e) => {
                self.refused = Some(target);
                self.updates.with_label_values(&["rejected"]).inc();
                tracing::error!(error = %e, revision = target, "control-plane update refused; keeping the snapshot in force");
            }
        }
    }
}

/// What the last-known-good writer is asked to do.
#[derive(Debug)]
pub enum Keep {
    /// Apply an update the snapshot took, and write the state.
    Apply(Box<SnapshotUpdate>),
    /// The control plane was heard from: the file's state is current as of now.
    Confirm,
    /// The token changed: seal the file under the new one from now on, and again now.
    Reseal(Box<LastKnownGood>),
}

/// Keeps the last-known-good file in step with the snapshot, on a thread of its own: the
/// follower hands it each applied update and each contact and never waits for the disk.
/// While it writes, what arrives queues up, and is applied and written at once after. When
/// the follower goes, the thread writes what is pending and ends; a process that exits
/// first loses at most that write (the file is replaced whole, never torn).
#[derive(Debug, Clone)]
pub struct Keeper {
    queue: std::sync::mpsc::Sender<Keep>,
}

impl Keeper {
    /// Starts the writer over `state` (already in the file).
    pub fn start(mut file: LastKnownGood, mut state: StoreState) -> Result<Self, String> {
        let (queue, pending) = std::sync::mpsc::channel::<Keep>();
        std::thread::Builder::new()
            .name(String::from("portcullis-lkg"))
            .spawn(move || {
                while let Ok(first) = pending.recv() {
                    let (mut changed, mut confirmed) = (false, false);
                    for keep in std::iter::once(first).chain(pending.try_iter()) {
                        match keep {
                            Keep::Apply(update) => {
                                state.apply(*update);
                                changed = true;
                            }
                            Keep::Confirm => confirmed = true,
                            Keep::Reseal(sealed) => {
                                file = *sealed;
                                changed = true;
                            }
                        }
                    }
                    if changed {
                        if let Err(e) = file.save(&state) {
                            tracing::warn!(error = %e, "last-known-good state not saved");
                        }
                    } else if confirmed {
                        file.touch();
                    }
                }
            })
            .map_err(|e| format!("cannot start the last-known-good writer: {e}"))?;
        Ok(Self { queue })
    }

    /// Hands `keep` to the writer; never blocks.
    pub fn send(&self, keep: Keep) {
        if self.queue.send(keep).is_err() {
            tracing::warn!("the last-known-good writer has stopped; the file is not kept");
        }
    }
}

/// Reads a control-plane token file (surrounding whitespace trimmed); an empty file is an
/// error.
pub fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("`{}`: {e}", path.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!("`{}`: the token file is empty", path.display()));
    }
    Ok(token)
}

/// Re-reads the control-plane token file whenever it changes (a rotated Kubernetes Secret
/// or projected token): the next request carries the new token, and the last-known-good
/// file at `state_path` is sealed again under it, so a restart with the new token can
/// still start from it. A file that cannot be read keeps the token in force.
pub async fn watch_token(
    token_file: PathBuf,
    control: ControlPlane,
    keeper: Keeper,
    state_path: PathBuf,
    reloads: prometheus::IntCounterVec,
) {
    let paths = vec![token_file.clone()];
    crate::file_watch::reload_on_change(paths, "control-plane token", reloads, || {
        let token = read_token(&token_file)?;
        if **control.token.load() == token {
            return Ok(());
        }
        let sealed = LastKnownGood::new(state_path.clone(), &token)?;
        control.token.store(Arc::new(token));
        keeper.send(Keep::Reseal(Box::new(sealed)));
        Ok(())
    })
    .await;
}

/// Builds the snapshot of a state.
pub fn build(state: StoreState) -> Result<Snapshot, String> {
    Snapshot::build(state, now_ms()).map_err(|e| format!("the state does not compile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StoreState {
        StoreState {
            revision: 7,
            ..StoreState::default()
        }
    }

    /// Waits up to 5 s for the file to hold `revision`.
    fn wait_for_revision(file: &LastKnownGood, revision: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while file.load().map(|s| s.revision).ok() != Some(revision) {
            assert!(
                std::time::Instant::now() < deadline,
                "the file never reached revision {revision}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_keeper_writes_each_update_off_the_caller_and_what_is_pending_when_dropped() {
        let dir = std::env::temp_dir().join(format!("portcullis-keeper-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("last-known-good.json");
        let file = || LastKnownGood::new(path.clone(), "token").unwrap();
        file().save(&state()).unwrap();
        let rebuild = |revision| {
            Keep::Apply(Box::new(SnapshotUpdate::Rebuild(StoreState {
                revision,
                ..StoreState::default()
            })))
        };

        let keeper = Keeper::start(file(), state()).unwrap();
        // One update is written without the keeper being asked again.
        keeper.send(rebuild(8));
        wait_for_revision(&file(), 8);
        // A contact refreshes the file's confirmation time, its state unchanged.
        let before = file().confirmed_at();
        std::thread::sleep(Duration::from_millis(20));
        keeper.send(Keep::Confirm);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while file().confirmed_at() == before {
            assert!(std::time::Instant::now() < deadline, "never confirmed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(file().load().unwrap().revision, 8);
        // A burst: whatever is pending when the follower goes is written last.
        for revision in 9..=40 {
            keeper.send(rebuild(revision));
        }
        drop(keeper);
        wait_for_revision(&file(), 40);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_last_known_good_file_is_sealed_and_any_change_is_refused() {
        let dir = std::env::temp_dir().join(format!("portcullis-lkg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("last-known-good.json");
        let file = LastKnownGood::new(path.clone(), "token-a").unwrap();
        file.save(&state()).unwrap();
        assert_eq!(file.load().unwrap().revision, 7);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other_token = LastKnownGood::new(path.clone(), "token-b").unwrap();
        assert!(other_token.load().unwrap_err().contains("does not verify"));

        let sealed = std::fs::read_to_string(&path).unwrap();
        let edited = sealed.replacen("\"revision\":7", "\"revision\":8", 1);
        assert_ne!(edited, sealed);
        std::fs::write(&path, edited).unwrap();
        assert!(file.load().unwrap_err().contains("does not verify"));
        let (head, json) = sealed.split_once('\n').unwrap();
        for broken in [
            json.to_owned(),
            format!("{head}\n"),
            format!("{head}x\n{json}"),
            String::new(),
        ] {
            std::fs::write(&path, broken).unwrap();
            assert!(file.load().is_err());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_change_stream_is_read_across_chunks_without_its_comments() {
        // The control plane's framing, cut where the network may cut it.
        let chunks = [
            "event: heartbeat\ndata: 4",
            "2\n\n: keep-alive\n\nevent: update\nid: 43\ndata: {\"a\":\ndata: 1}\n\n",
        ];
        let bytes = futures_util::stream::iter(
            chunks.map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c))),
        );
        let events: Vec<(String, String)> = bytes
            .eventsource()
            .map(|e| e.map(|e| (e.event, e.data)).unwrap())
            .collect()
            .await;
        assert_eq!(
            events,
            [
                (String::from("heartbeat"), String::from("42")),
                (String::from("update"), String::from("{\"a\":\n1}")),
            ]
        );
    }
}
