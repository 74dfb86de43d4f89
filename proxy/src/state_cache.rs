//! What a proxy in cached state mode (`state.mode: cached`) holds apart from the shared
//! part of the state: users, services, and entities of types the control plane does not
//! hold in full — a bounded in-process cache (L1, moka, weighed in estimated bytes),
//! filled on a miss from the shared cache in Redis (L2, when `state.redis` names one) or
//! else from the control plane (`GET /v1/snapshot/principals/{kind}/{id}`,
//! `GET /v1/snapshot/entities/{type}/{id}`).
//!
//! - A miss never blocks a worker thread: it is awaited, under `state.miss_timeout_ms`;
//!   concurrent misses of one key share one fetch. A miss that fails or runs out of time
//!   is an error the data plane answers with 503 `state_unavailable`: never a guess.
//! - The follower evicts exactly the keys each change names ([`Self::evict`]) and
//!   everything after a gap in the stream ([`Self::clear`]). It also remembers, for a
//!   while, the revision each key last changed at: a slice older than that (a shared
//!   cache that missed a write, a control-plane replica behind this one, a fetch that was
//!   in flight during the change) is refused, not cached.
//! - Keys the store does not hold are cached too (as absent), so a stream of unknown
//!   subjects or documents costs one fetch each and stays within the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use portcullis_engine::decision::{Fetched, FetchedView};
use portcullis_engine::snapshot::{SliceValue, Snapshot, StateSlice};
use portcullis_l2::SharedCache;
use portcullis_model::{EntityRef, Revision};

use crate::follow::ControlPlane;
use crate::metrics::StateCacheMetrics;

/// How long the revision of a change is remembered for the freshness check: longer than
/// any fetch can take, and than the shared cache can lag behind without the control plane
/// noticing and starting a new generation.
const CHANGES_REMEMBERED: Duration = Duration::from_secs(10 * 60);

/// How many changed keys are remembered at most.
const CHANGES_REMEMBERED_ENTRIES: u64 = 200_000;

/// The estimated memory of a cached key beyond its JSON form: the view's maps, the Cedar
/// attributes, the cache's own entry.
const ENTRY_OVERHEAD_BYTES: usize = 512;

/// A view takes about this many times the bytes of its JSON form (measured
/// with the e2e flood test: 3,000 users of 40 assignments each held unbounded grew the
/// process by 82 MiB, their JSON is about 22 MB).
const MEMORY_PER_JSON_BYTE: usize = 4;

/// The users, services and entities of cached state mode.
pub struct StateCache {
    held: moka::future::Cache<EntityRef, Arc<Fetched>>,
    /// The revision each key last changed at, as the change stream said.
    changed: moka::sync::Cache<EntityRef, Revision>,
    /// Nothing older than this revision is taken (set when the cache is cleared).
    floor: AtomicI64,
    shared: Option<Arc<SharedCache>>,
    control: ControlPlane,
    miss_timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("entries", &self.held.entry_count())
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

impl StateCache {
    /// A cache bounded by `max_bytes` (estimated), filling misses from `shared` (if any)
    /// and `control` within `miss_timeout`.
    pub fn new(
        max_bytes: u64,
        miss_timeout: Duration,
        shared: Option<Arc<SharedCache>>,
        control: ControlPlane,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let held = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &EntityRef, fetched: &Arc<Fetched>| weigh(key, fetched))
            .build();
        let changed = moka::sync::Cache::builder()
            .max_capacity(CHANGES_REMEMBERED_ENTRIES)
            .time_to_live(CHANGES_REMEMBERED)
            .build();
        Self {
            held,
            changed,
            floor: AtomicI64::new(i64::MIN),
            shared,
            control,
            miss_timeout,
            metrics,
        }
    }

    fn m(&self) -> &StateCacheMetrics {
        &self.metrics.state_cache
    }

    /// The key's view, from the cache or fetched now (prepared against `snapshot`).
    pub async fn get(
        &self,
        snapshot: &Snapshot,
        key: &EntityRef,
    ) -> Result<Arc<Fetched>, Unavailable> {
        if let Some(held) = self.held.get(key).await {
            self.m().hits.inc();
            return Ok(held);
        }
        self.m().misses.inc();
        let started = Instant::now();
        let fetched = tokio::time::timeout(self.miss_timeout, async {
            // A fetch overtaken by a change heard of meanwhile (the follower's eviction may
            // have come before the insertion; the change is noted before the eviction, so
            // this sees it) is dropped and done again, once: the next one reads the slice
            // the change wrote.
            for _ in 0..2 {
                let fetched = (self.held)
                    .try_get_with_by_ref(key, self.fetch(snapshot, key))
                    .await
                    .map_err(|e| (*e).clone())?;
                if fetched.revision >= self.floor_of(key) {
                    return Ok(fetched);
                }
                self.held.invalidate(key).await;
            }
            Err(Unavailable(format!(
                "`{key}` changed twice while it was fetched"
            )))
        })
        .await;
        self.m()
            .miss_seconds
            .observe(started.elapsed().as_secs_f64());
        fetched.unwrap_or_else(|_| {
            Err(Unavailable(format!(
                "`{key}`: not fetched within {} ms",
                self.miss_timeout.as_millis()
            )))
        })
    }

    /// The oldest revision a slice of `key` may have.
    fn floor_of(&self, key: &EntityRef) -> Revision {
        let changed = self.changed.get(key).unwrap_or(i64::MIN);
        changed.max(self.floor.load(Ordering::Acquire))
    }

    /// One fetch: the shared cache if it has a slice fresh enough, else the control plane.
    async fn fetch(
        &self,
        snapshot: &Snapshot,
        key: &EntityRef,
    ) -> Result<Arc<Fetched>, Unavailable> {
        let floor = self.floor_of(key);
        let count = |source: &str, outcome: &str| {
            self.m().fetches.with_label_values(&[source, outcome]).inc();
        };
        if let Some(shared) = &self.shared {
            match shared.get(key).await {
                Ok(Some(slice)) if slice.revision >= floor && slice.is_of(key) => {
                    count("shared_cache", "found");
                    return Ok(prepare(snapshot, key, slice));
                }
                Ok(Some(_)) => count("shared_cache", "stale"),
                Ok(None) => count("shared_cache", "absent"),
                Err(e) => {
                    count("shared_cache", "error");
                    tracing::debug!(error = %e, key = %key, "shared cache not read; asking the control plane");
                }
            }
        }
        match self.control.slice(key).await {
            Ok(slice) if slice.revision >= floor => {
                count("control_plane", "found");
                Ok(prepare(snapshot, key, slice))
            }
            Ok(slice) => {
                count("control_plane", "stale");
                Err(Unavailable(format!(
                    "`{key}`: the control plane answered revision {}, the change heard of is at {floor}",
                    slice.revision
                )))
            }
            Err(e) => {
                count("control_plane", "error");
                Err(Unavailable(format!("`{key}`: {e}")))
            }
        }
    }

    /// The change stream says `keys` changed at `revision`: evict exactly those.
    pub async fn evict(&self, keys: &[EntityRef], revision: Revision) {
        for key in keys {
            // Noted before the eviction: a fetch in flight then sees it (see `get`).
            self.changed.insert(key.clone(), revision);
            self.held.invalidate(key).await;
        }
        if !keys.is_empty() {
            self.m()
                .evictions
                .with_label_values(&["changed"])
                .inc_by(u64::try_from(keys.len()).unwrap_or(u64::MAX));
        }
    }

    /// A gap in the change stream (a rebuild, a revision jump): everything held may be
    /// stale, and so may anything fetched from before `revision`.
    pub fn clear(&self, revision: Revision) {
        self.floor.fetch_max(revision, Ordering::AcqRel);
        self.m()
            .evictions
            .with_label_values(&["cleared"])
            .inc_by(self.held.entry_count());
        self.held.invalidate_all();
    }

    /// Keeps the bound and the gauges current: moka applies evictions in batches, so
    /// once a second what is pending is applied and the size read. Runs until the process
    /// stops it.
    pub async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.held.run_pending_tasks().await;
            let m = self.m();
            m.entries
                .set(i64::try_from(self.held.entry_count()).unwrap_or(i64::MAX));
            m.weighted_bytes
                .set(i64::try_from(self.held.weighted_size()).unwrap_or(i64::MAX));
        }
    }
}

/// The cache entry of a slice.
fn prepare(snapshot: &Snapshot, key: &EntityRef, slice: StateSlice) -> Arc<Fetched> {
    Arc::new(Fetched {
        key: key.clone(),
        revision: slice.revision,
        view: slice.value.map(|value| match value {
            SliceValue::Principal((principal, assignments)) => {
                FetchedView::Principal(Arc::new(snapshot.principal_view(principal, assignments)))
            }
            SliceValue::Entity(record) => {
                FetchedView::Entity(Arc::new(snapshot.entity_view(record)))
            }
        }),
    })
}

/// The estimated bytes of an entry: a multiple of what it takes as JSON, plus a fixed
/// overhead.
fn weigh(key: &EntityRef, fetched: &Fetched) -> u32 {
    let json = match &fetched.view {
        None => 0,
        Some(FetchedView::Principal(view)) => {
            json_len(&view.principal) + view.assignments().map(json_len).sum::<usize>()
        }
        Some(FetchedView::Entity(view)) => json_len(&view.record),
    };
    let bytes =
        ENTRY_OVERHEAD_BYTES + key.type_name().len() + key.id().len() + MEMORY_PER_JSON_BYTE * json;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The length of a value's JSON form, counted without writing it anywhere.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

#[cfg(test)]
mod tests {
    //! The refetch of a slice a change overtook. The race cannot be timed against a real
    //! control plane, so a stand-in answers `/v1/snapshot/principals` over a real socket,
    //! holding its first answer until the test has heard of the change.

    use super::*;
    use crate::follow::ControlPlane;
    use portcullis_engine::snapshot::StoreState;
    use portcullis_model::{PolicySetVersion, Principal, PrincipalKind, principal_ref};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn snapshot() -> Snapshot {
        let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let read = |f: &str| std::fs::read_to_string(policies.join(f)).unwrap();
        Snapshot::build(
            StoreState {
                policy_set: Some(PolicySetVersion {
                    version: 1,
                    files: vec![portcullis_model::PolicyFile {
                        name: String::from("default.cedar"),
                        text: read("default.cedar"),
                    }],
                    schema: read("schema.cedarschema"),
                    created_by: None,
                    created_at: 0,
                }),
                ..StoreState::default()
            },
            0,
        )
        .unwrap()
    }

    fn slice(revision: Revision) -> String {
        let principal: Principal = serde_json::from_value(
            serde_json::json!({"kind": "user", "id": "alice", "tenant": "t1"}),
        )
        .unwrap();
        serde_json::to_string(&StateSlice {
            revision,
            value: Some(SliceValue::Principal((principal, Vec::new()))),
        })
        .unwrap()
    }

    /// Answers each request with the next of `answers`, the first only once `release`
    /// fires; counts requests in `asked`.
    async fn stand_in(
        listener: tokio::net::TcpListener,
        answers: Vec<String>,
        release: tokio::sync::oneshot::Receiver<()>,
        asked: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let mut release = Some(release);
        for body in answers {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0_u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            asked.fetch_add(1, Ordering::SeqCst);
            if let Some(release) = release.take() {
                release.await.unwrap();
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_fetch_overtaken_by_a_change_is_done_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (release, released) = tokio::sync::oneshot::channel();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(stand_in(
            listener,
            vec![slice(5), slice(7)],
            released,
            Arc::clone(&asked),
        ));
        let cache = Arc::new(StateCache::new(
            1 << 20,
            Duration::from_secs(5),
            None,
            ControlPlane::new(&base, String::from("t"), reqwest::Client::new()),
            Arc::new(crate::metrics::Metrics::new()),
        ));
        let snapshot = Arc::new(snapshot());
        let alice = principal_ref(PrincipalKind::User, "alice");
        let fetching = tokio::spawn({
            let (cache, snapshot, alice) =
                (Arc::clone(&cache), Arc::clone(&snapshot), alice.clone());
            async move { cache.get(&snapshot, &alice).await }
        });
        // The first fetch is in flight when the stream says alice changed at revision 6.
        while asked.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cache.evict(std::slice::from_ref(&alice), 6).await;
        release.send(()).unwrap();
        let fetched = fetching.await.unwrap().unwrap();
        assert_eq!(fetched.revision, 7);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // Held now: no third fetch.
        assert_eq!(cache.get(&snapshot, &alice).await.unwrap().revision, 7);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }
}
