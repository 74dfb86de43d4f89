//! The control plane's core loop: follows the store into the snapshot in force and into
//! the change feed every watching sidecar reads.
//!
//! Each revision is read from the store once and encoded once per view, here, whatever the
//! number of sidecars watching: [`Publisher::publish_pending`] reads the update, applies it
//! to the snapshot and, once it applied, keeps its encoded forms in the [`ChangeFeed`] — the
//! whole update for sidecars holding the full state, its shared view for those in cached
//! state mode. `GET /v1/watch` streams from the feed; only a caller further behind than the
//! feed remembers reads the store for itself (its catch-up).
//!
//! The shared view leaves out users and services, and the entities of types the feed does
//! not hold ([`ChangeFeed::held_entity_types`], one rule for every sidecar, so it is encoded
//! once). With a shared cache ([`SharedCacheTarget`]), what a revision changed of those is
//! written to it before the feed announces the revision (so a sidecar that evicts on the
//! news and misses reads the new slice); when a write fails, and at start, the cache moves
//! to a new generation before the next write.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_engine::snapshot::{
    HeldEntityTypes, SliceValue, SnapshotHandle, SnapshotUpdate, StateSlice, is_shared,
};
use portcullis_l2::SharedCache;
use portcullis_model::{EntityRef, Revision};
use portcullis_store::{Store, StoreError};
use prometheus::{IntCounterVec, IntGauge};

/// How many published steps the feed keeps for watchers that fell a little behind.
const KEPT_STEPS: usize = 64;

/// How often the follower looks at the store even when no commit woke it (a missed wake-up,
/// a peer's commit while the relay was reconnecting).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// One published step: what brings a snapshot at `from` to `to`, encoded as JSON once.
#[derive(Debug)]
pub struct Step {
    /// The revision the step starts from.
    pub from: Revision,
    /// The revision it brings a snapshot to.
    pub to: Revision,
    /// The [`SnapshotUpdate`] as JSON: what `GET /v1/updates?since=<from>` answers.
    pub json: Arc<str>,
    /// Its shared view ([`SnapshotUpdate::shared`]) as JSON, for `view=shared`.
    pub shared_json: Arc<str>,
}

/// The last published steps and the revision published last; written by one
/// [`Publisher`], read by every watcher.
#[derive(Debug)]
pub struct ChangeFeed {
    steps: RwLock<VecDeque<Arc<Step>>>,
    head: tokio::sync::watch::Sender<Revision>,
    held_entity_types: HeldEntityTypes,
    /// The shared view of the whole state, as JSON, and the revision it was read at: what
    /// cached sidecars bootstrap from, read and encoded once for all that ask together.
    shared_state: tokio::sync::Mutex<Option<(Revision, Arc<str>)>>,
}

impl ChangeFeed {
    /// An empty feed at `revision`, whose shared view holds the entities of `held` types.
    pub fn new(revision: Revision, held: HeldEntityTypes) -> Self {
        Self {
            steps: RwLock::new(VecDeque::with_capacity(KEPT_STEPS)),
            head: tokio::sync::watch::Sender::new(revision),
            held_entity_types: held,
            shared_state: tokio::sync::Mutex::new(None),
        }
    }

    /// The revision published last.
    pub fn head(&self) -> Revision {
        *self.head.borrow()
    }

    /// The shared view of the state as JSON, at the published revision or later: read
    /// from the store and encoded by `load` only when the one kept is older. Callers that
    /// come while it loads wait for it, so a restart storm of cached sidecars costs one
    /// store read per revision, not one per sidecar.
    pub async fn shared_state<E>(
        &self,
        load: impl Future<Output = Result<(Revision, Arc<str>), E>>,
    ) -> Result<Arc<str>, E> {
        let mut kept = self.shared_state.lock().await;
        if let Some((revision, json)) = kept.as_ref()
            && *revision >= self.head()
        {
            return Ok(Arc::clone(json));
        }
        let (revision, json) = load.await?;
        *kept = Some((revision, Arc::clone(&json)));
        Ok(json)
    }

    /// The entity types the shared view holds in full; entities of others are fetched by
    /// the sidecars, one at a time.
    pub fn held_entity_types(&self) -> &HeldEntityTypes {
        &self.held_entity_types
    }

    /// The revision of each step published from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.head.subscribe()
    }

    /// The kept step that starts at `since`, if the feed still has it.
    pub fn step_from(&self, since: Revision) -> Option<Arc<Step>> {
        let steps = self
            .steps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        steps.iter().find(|s| s.from == since).map(Arc::clone)
    }

    fn push(&self, step: Step) {
        let to = step.to;
        {
            let mut steps = self
                .steps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if steps.len() == KEPT_STEPS {
                steps.pop_front();
            }
            steps.push_back(Arc::new(step));
        }
        self.head.send_replace(to);
    }
}

/// What the publisher counts, in the registry the process serves.
#[derive(Debug, Clone)]
pub struct PublishMetrics {
    /// `portcullis_snapshot_updates_total{outcome}`: `applied` or `rejected`.
    pub updates: IntCounterVec,
    /// `portcullis_snapshot_revision`.
    pub revision: IntGauge,
    /// `portcullis_feed_encodes_total{view}`: `full` or `shared`; one each per revision.
    pub encodes: IntCounterVec,
    /// `portcullis_shared_cache_writes_total{outcome}`: slices `written`, writes `failed`,
    /// `generations` begun.
    pub shared_cache_writes: IntCounterVec,
}

/// The shared cache (L2) the control plane writes the slices sidecars fetch to.
#[derive(Debug, Clone)]
pub struct SharedCacheTarget {
    /// The client.
    pub cache: Arc<SharedCache>,
    /// How long a slice stays when nobody rewrites it.
    pub ttl: Duration,
}

/// Writes what each published revision changed to the shared cache.
#[derive(Debug)]
struct SharedCacheWriter {
    target: SharedCacheTarget,
    /// A new generation is due before the next write: at start (commits may have landed
    /// while nobody wrote), after a failed write, after a rebuild.
    stale: bool,
    /// The cache failed last time: said once, not at every retry.
    failing: bool,
}

impl SharedCacheWriter {
    /// Writes `slices` (a rebuild: everything may have changed, so a new generation
    /// instead); counts in `metrics`.
    async fn write(
        &mut self,
        slices: &[(EntityRef, StateSlice)],
        rebuild: bool,
        metrics: Option<&PublishMetrics>,
    ) {
        let count = |outcome: &str, n: u64| {
            if let Some(m) = metrics {
                m.shared_cache_writes
                    .with_label_values(&[outcome])
                    .inc_by(n);
            }
        };
        self.stale |= rebuild;
        if self.stale {
            match self.target.cache.new_generation().await {
                Ok(generation) => {
                    self.stale = false;
                    self.failing = false;
                    count("generations", 1);
                    tracing::info!(generation, "shared cache: a new generation begins");
                }
                Err(e) => {
                    count("failed", 1);
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(error = %e, "shared cache unavailable: nothing written until a new generation begins");
                    }
                    return;
                }
            }
        }
        if slices.is_empty() {
            return;
        }
        match self.target.cache.put(slices, self.target.ttl).await {
            Ok(written) => count("written", u64::try_from(written).unwrap_or(u64::MAX)),
            Err(e) => {
                self.stale = true;
                self.failing = true;
                count("failed", 1);
                tracing::warn!(error = %e, "shared cache: slices not written; a new generation will begin");
            }
        }
    }
}

/// The slices of what `update` changes that the shared view leaves out (users, services,
/// entities of types not `held`), current at its revision.
fn changed_slices(update: &SnapshotUpdate, held: &HeldEntityTypes) -> Vec<(EntityRef, StateSlice)> {
    let SnapshotUpdate::Patch(delta) = update else {
        return Vec::new();
    };
    let slice = |value: Option<SliceValue>| StateSlice {
        revision: delta.revision,
        value,
    };
    let principals = (delta.principals.iter())
        .filter(|(key, _)| !is_shared(key))
        .map(|(key, value)| (key.clone(), slice(value.clone().map(SliceValue::Principal))));
    let entities = (delta.entities.iter())
        .filter(|(key, _)| !held.holds(key))
        .map(|(key, value)| (key.clone(), slice(value.clone().map(SliceValue::Entity))));
    principals.chain(entities).collect()
}

/// Brings the snapshot and the feed to the store's revision; one per control plane.
#[derive(Debug)]
pub struct Publisher<S> {
    store: S,
    snapshot: Arc<SnapshotHandle>,
    feed: Arc<ChangeFeed>,
    metrics: Option<PublishMetrics>,
    /// A refused revision is not retried until the store moves past it.
    refused: Option<Revision>,
    shared_cache: Option<SharedCacheWriter>,
}

impl<S: Store> Publisher<S> {
    /// A publisher of `store` into `snapshot` and `feed`.
    pub fn new(
        store: S,
        snapshot: Arc<SnapshotHandle>,
        feed: Arc<ChangeFeed>,
        metrics: Option<PublishMetrics>,
    ) -> Self {
        Self {
            store,
            snapshot,
            feed,
            metrics,
            refused: None,
            shared_cache: None,
        }
    }

    /// Also writes what each revision changed of what the shared view leaves out to a
    /// shared cache.
    #[must_use]
    pub fn with_shared_cache(mut self, target: SharedCacheTarget) -> Self {
        self.shared_cache = Some(SharedCacheWriter {
            target,
            stale: true,
            failing: false,
        });
        self
    }

    /// Applies and publishes what the store committed since the snapshot's revision; the
    /// revision now in force. A revision that does not compile is refused and counted; the
    /// snapshot in force stays.
    pub async fn publish_pending(&mut self) -> Result<Revision, StoreError> {
        let current = self.snapshot.load().revision();
        let revision = self.store.revision().await?;
        if revision <= current || self.refused == Some(revision) {
            return Ok(current);
        }
        let update = self.store.load_update(current).await?;
        let to = update.revision();
        let encode = |update: &SnapshotUpdate, view: &str| {
            if let Some(m) = &self.metrics {
                m.encodes.with_label_values(&[view]).inc();
            }
            serde_json::to_string(update)
                .map(Arc::<str>::from)
                .map_err(|e| StoreError::Corrupt(format!("revision {to} cannot be encoded: {e}")))
        };
        let json = encode(&update, "full")?;
        let held = self.feed.held_entity_types();
        let shared_json = encode(&update.shared(held), "shared")?;
        let slices = changed_slices(&update, held);
        let rebuild = matches!(update, SnapshotUpdate::Rebuild(_));
        match self
            .snapshot
            .apply(update, jiff::Timestamp::now().as_millisecond())
        {
            Ok(applied) => {
                if let Some(writer) = &mut self.shared_cache {
                    writer.write(&slices, rebuild, self.metrics.as_ref()).await;
                }
                self.feed.push(Step {
                    from: current,
                    to: applied,
                    json,
                    shared_json,
                });
                if let Some(m) = &self.metrics {
                    m.updates.with_label_values(&["applied"]).inc();
                    m.revision.set(applied);
                }
                tracing::info!(revision = applied, "snapshot updated");
                Ok(applied)
            }
            Err(e) => {
                self.refused = Some(revision);
                if let Some(m) = &self.metrics {
                    m.updates.with_label_values(&["rejected"]).inc();
                }
                tracing::error!(error = %e, revision, "store revision refused; keeping the snapshot in force");
                Ok(current)
            }
        }
    }

    /// Publishes every commit as it happens; runs until the process stops it.
    pub async fn run(mut self) {
        let mut commits = self.store.commits();
        if let Some(writer) = &mut self.shared_cache {
            writer.write(&[], false, self.metrics.as_ref()).await;
        }
        loop {
            // Woken by a commit (this process's, or a replica's on PostgreSQL); the timer
            // only catches what a wake-up missed.
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                woken = commits.changed() => {
                    if woken.is_err() {
                        tokio::time::sleep(FOLLOW_INTERVAL).await;
                    }
                }
            }
            if let Err(e) = self.publish_pending().await {
                tracing::warn!(error = %e, "cannot read the store's changes; serving the last snapshot");
            }
            // A generation due (at start, after a failed write) begins as soon as the
            // cache answers, not only at the next commit.
            if let Some(writer) = self.shared_cache.as_mut().filter(|w| w.stale) {
                writer.write(&[], false, self.metrics.as_ref()).await;
            }
        }
    }
}
