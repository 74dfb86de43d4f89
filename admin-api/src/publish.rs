//! The control plane's core loop: follows the store into the snapshot in force and into
//! the change feed every watching sidecar reads.
//!
//! Each revision is read from the store once and encoded once, here, whatever the number of
//! sidecars watching: [`Publisher::publish_pending`] reads the update, applies it to the
//! snapshot and, once it applied, keeps its encoded form in the [`ChangeFeed`].
//! `GET /v1/watch` streams from the feed; only a caller further behind than the feed
//! remembers reads the store for itself (its catch-up).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_engine::snapshot::SnapshotHandle;
use portcullis_model::Revision;
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
}

/// The last published steps and the revision published last; written by one
/// [`Publisher`], read by every watcher.
#[derive(Debug)]
pub struct ChangeFeed {
    steps: RwLock<VecDeque<Arc<Step>>>,
    head: tokio::sync::watch::Sender<Revision>,
}

impl ChangeFeed {
    /// An empty feed at `revision`.
    pub fn new(revision: Revision) -> Self {
        Self {
            steps: RwLock::new(VecDeque::with_capacity(KEPT_STEPS)),
            head: tokio::sync::watch::Sender::new(revision),
        }
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
        }
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
        let json = match serde_json::to_string(&update) {
            Ok(json) => Arc::<str>::from(json),
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "revision {to} cannot be encoded: {e}"
                )));
            }
        };
        match self
            .snapshot
            .apply(update, jiff::Timestamp::now().as_millisecond())
        {
            Ok(applied) => {
                self.feed.push(Step {
                    from: current,
                    to: applied,
                    json,
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
        }
    }
}
