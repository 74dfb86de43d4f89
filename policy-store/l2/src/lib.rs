//! `portcullis-l2` owns what proxies share through Redis: the shared state cache (L2) and
//! the counters of shared rate limits ([`rate`]).
//!
//! The shared state cache holds one [`StateSlice`] per user,
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
//! a miss nothing but that check (`link`).

use std::time::Duration;

use portcullis_engine::snapshot::StateSlice;
use portcullis_model::EntityRef;

mod link;
pub mod rate;

use link::Link;

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
    link: Link,
    prefix: String,
    read: redis::Script,
    write: redis::Script,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("prefix", &self.prefix)
            .field("timeout", &self.link.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedCache {
    /// A client of the Redis at `url` (`redis://host:port/db`), keys under `prefix`, each
    /// call bounded by `timeout`. Does not connect yet.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            link: Link::new(url, timeout)?,
            prefix: prefix.to_owned(),
            read: redis::Script::new(READ),
            write: redis::Script::new(WRITE),
        })
    }

    fn generation_key(&self) -> String {
        format!("{}:generation", self.prefix)
    }

    /// The slice of `key`, if the current generation holds one.
    pub async fn get(&self, key: &EntityRef) -> Result<Option<StateSlice>, L2Error> {
        let mut connection = self.link.connection().await?;
        let generation_key = self.generation_key();
        let mut invocation = self.read.key(&generation_key);
        invocation.arg(&self.prefix).arg(key.to_string());
        let value: Option<Vec<u8>> = self
            .link
            .call(invocation.invoke_async(&mut connection))
            .await?;
        value.map(|bytes| decode(&bytes)).transpose()
    }

    /// Writes slices, each only where the current generation holds an older one or none,
    /// kept for `ttl`. Returns how many were written.
    pub async fn put(
        &self,
        slices: &[(EntityRef, StateSlice)],
        ttl: Duration,
    ) -> Result<usize, L2Error> {
        let mut connection = self.link.connection().await?;
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
            let count: usize = self
                .link
                .call(invocation.invoke_async(&mut connection))
                .await?;
            written += count;
        }
        Ok(written)
    }

    /// Moves to a new generation: every slice written before is out of reach (and fades
    /// with its time to live). Returns the new generation.
    pub async fn new_generation(&self) -> Result<i64, L2Error> {
        let mut connection = self.link.connection().await?;
        let key = self.generation_key();
        self.link
            .call(redis::cmd("INCR").arg(&key).query_async(&mut connection))
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
