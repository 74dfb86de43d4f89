//! `portcullis-l2` owns the shared state cache in Redis (L2): one [`StateSlice`] per user,
//! service or entity that sidecars in cached state mode fetch (the shared part they hold
//! in full leaves it out), written by the control plane when it publishes a revision that
//! changed it (and when a sidecar asked it for one), read by those sidecars when their own
//! cache (L1) misses.
//!
//! Keys: `{prefix}:generation` holds the current generation; a slice lives at
//! `{prefix}:{generation}:{key}` (`portcullis:3:User::"alice"`) as
//! `{revision}\n{slice as JSON}`, with a time to live, so keys nobody asks for fade.
//!
//! Freshness, since a sidecar must never enforce a grant the store has dropped:
//! - a write replaces a slice only with one of a higher revision (one script, so a late
//!   read-through cannot overwrite a newer commit);
//! - the control plane writes a revision's slices before it tells the sidecars about the
//!   revision, so a sidecar that evicts on that news and misses reads the new slice;
//! - when a write fails, or when a control plane starts (commits may have landed while no
//!   one wrote), the control plane moves to a new generation ([`SharedCache::new_generation`])
//!   before it writes again: every slice written before is out of reach at once;
//! - a sidecar also refuses a slice older than the revision at which it last heard the key
//!   changed (it then asks the control plane).
//!
//! Every call has a deadline; Redis being away is an error the caller falls back on, and
//! after a failed connect no new one is tried for a second, so a Redis that is down costs
//! a miss nothing but that check.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use portcullis_engine::snapshot::StateSlice;
use portcullis_model::EntityRef;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why a call to the shared cache did not answer.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// Redis could not be reached, or did not answer in time.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// What Redis holds at the key is not a slice (written by something else).
    #[error("not a state slice: {0}")]
    Corrupt(String),
}

/// Reads a slice, in the current generation.
const READ: &str = r"
local generation = redis.call('GET', KEYS[1]) or '0'
return redis.call('GET', ARGV[1] .. ':' .. generation .. ':' .. ARGV[2])
";

/// Writes slices, in the current generation, each only over an older one. ARGV: prefix,
/// time to live (s), then (key, revision, value) triples. Returns how many it wrote.
const WRITE: &str = r"
local generation = redis.call('GET', KEYS[1]) or '0'
local written = 0
for i = 3, #ARGV, 3 do
  local key = ARGV[1] .. ':' .. generation .. ':' .. ARGV[i]
  local revision = tonumber(ARGV[i + 1])
  local current = redis.call('GET', key)
  local held = current and tonumber(string.match(current, '^(%-?%d+)\n'))
  if not held or held < revision then
    redis.call('SET', key, ARGV[i + 1] .. '\n' .. ARGV[i + 2], 'EX', ARGV[2])
    written = written + 1
  end
end
return written
";

/// How many slices one write script carries at most.
const WRITE_BATCH: usize = 256;

/// A client of the shared cache, connected on first use and reconnected by itself.
pub struct SharedCache {
    client: redis::Client,
    connection: ArcSwapOption<ConnectionManager>,
    /// No connect is tried before this instant (ms since `started`): after a failure.
    retry_at_ms: AtomicI64,
    started: Instant,
    prefix: String,
    timeout: Duration,
    read: redis::Script,
    write: redis::Script,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedCache {
    /// A client of the Redis at `url` (`redis://host:port/db`), keys under `prefix`, each
    /// call bounded by `timeout`. Does not connect yet.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        Ok(Self {
            client,
            connection: ArcSwapOption::empty(),
            retry_at_ms: AtomicI64::new(0),
            started: Instant::now(),
            prefix: prefix.to_owned(),
            timeout,
            read: redis::Script::new(READ),
            write: redis::Script::new(WRITE),
        })
    }

    fn generation_key(&self) -> String {
        format!("{}:generation", self.prefix)
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The connection, made now if there is none (at most one attempt a second).
    async fn connection(&self) -> Result<ConnectionManager, L2Error> {
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        if self.elapsed_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(L2Error::Unavailable(String::from(
                "not connected; retrying shortly",
            )));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let made = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(connection)) => {
                self.connection
                    .store(Some(std::sync::Arc::new(connection.clone())));
                Ok(connection)
            }
            Ok(Err(e)) => {
                self.retry_at_ms
                    .store(self.elapsed_ms() + 1000, Ordering::Relaxed);
                Err(L2Error::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.retry_at_ms
                    .store(self.elapsed_ms() + 1000, Ordering::Relaxed);
                Err(L2Error::Unavailable(String::from("connect timed out")))
            }
        }
    }

    /// Runs one call with the deadline.
    async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, L2Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(L2Error::Unavailable(e.to_string())),
            Err(_) => Err(L2Error::Unavailable(String::from("timed out"))),
        }
    }

    /// The slice of `key`, if the current generation holds one.
    pub async fn get(&self, key: &EntityRef) -> Result<Option<StateSlice>, L2Error> {
        let mut connection = self.connection().await?;
        let generation_key = self.generation_key();
        let mut invocation = self.read.key(&generation_key);
        invocation.arg(&self.prefix).arg(key.to_string());
        let value: Option<Vec<u8>> = self.call(invocation.invoke_async(&mut connection)).await?;
        value.map(|bytes| decode(&bytes)).transpose()
    }

    /// Writes slices, each only where the current generation holds an older one or none,
    /// kept for `ttl`. Returns how many were written.
    pub async fn put(
        &self,
        slices: &[(EntityRef, StateSlice)],
        ttl: Duration,
    ) -> Result<usize, L2Error> {
        let mut connection = self.connection().await?;
        let generation_key = self.generation_key();
        let mut written = 0;
        for batch in slices.chunks(WRITE_BATCH) {
            let mut invocation = self.write.key(&generation_key);
            invocation.arg(&self.prefix).arg(ttl.as_secs().max(1));
            for (key, slice) in batch {
                let json = serde_json::to_string(slice)
                    .map_err(|e| L2Error::Corrupt(format!("`{key}`: {e}")))?;
                invocation
                    .arg(key.to_string())
                    .arg(slice.revision)
                    .arg(json);
            }
            let count: usize = self.call(invocation.invoke_async(&mut connection)).await?;
            written += count;
        }
        Ok(written)
    }

    /// Moves to a new generation: every slice written before is out of reach (and fades
    /// with its time to live). Returns the new generation.
    pub async fn new_generation(&self) -> Result<i64, L2Error> {
        let mut connection = self.connection().await?;
        let key = self.generation_key();
        self.call(redis::cmd("INCR").arg(&key).query_async(&mut connection))
            .await
    }
}

/// A stored value: `{revision}\n{slice as JSON}`.
fn decode(bytes: &[u8]) -> Result<StateSlice, L2Error> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| L2Error::Corrupt(String::from("no revision line")))?;
    let json = bytes.get(newline + 1..).unwrap_or_default();
    serde_json::from_slice(json).map_err(|e| L2Error::Corrupt(e.to_string()))
}
