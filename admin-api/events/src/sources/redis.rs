//! The Redis Streams source: one consumer of a consumer group. After connecting, and after
//! each claim, it first takes what it was handed before and did not acknowledge (its
//! pending entries: after a failure, a restart under the same consumer name, or a claim),
//! then now and then claims the
//! entries another consumer left pending longer than `claim_idle_ms` (`XAUTOCLAIM`: that
//! consumer died), then blocks for new entries. An entry is acknowledged (`XACK`) only
//! once taken. Several control-plane replicas share a group: each entry goes to one of
//! them, and an entry claimed from a slow but living consumer is taken twice at most — the
//! second time a duplicate.
//!
//! The event is the value of one field of the entry (`event` by default); an entry
//! without it is kept as a dead letter, with all its fields as the body.

use std::collections::HashMap;
use std::time::Duration;

use portcullis_sinks::backoff::Backoff;
use portcullis_store::Store;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};

use super::{BACKLOG_EVERY, Every};
use crate::{Ingest, Unavailable};

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct RedisSource {
    /// `redis://host:port/db`.
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// The consumer group, made (from the stream's start) when missing.
    pub group: String,
    /// This consumer's name in the group; unique per process.
    pub consumer: String,
    /// The field of an entry that holds the event.
    pub field: String,
    /// Entries per read.
    pub batch: usize,
    /// How long one read waits for new entries.
    pub block_ms: usize,
    /// Entries pending this long with another consumer are claimed.
    pub claim_idle_ms: u64,
}

impl RedisSource {
    /// The source name in dead letters, the ledger and logs: `redis:<stream>`.
    pub fn name(&self) -> String {
        format!("redis:{}", self.stream)
    }
}

/// Why a turn ended early.
enum Stop {
    /// Redis failed: reconnect.
    Redis(redis::RedisError),
    /// The store or the ledger failed: the entry stays pending.
    Store(Unavailable),
}

impl From<redis::RedisError> for Stop {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

/// Consumes `source` into `ingest` until the task is dropped.
pub async fn consume<S: Store>(ingest: Ingest<S>, source: RedisSource) {
    let name = source.name();
    tracing::info!(
        source = name,
        group = source.group,
        consumer = source.consumer,
        "consuming lifecycle events"
    );
    let errors = ingest.metrics().source_errors.with_label_values(&["redis"]);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let stopped = match connect(&source).await {
            Ok(mut con) => run(&mut con, &ingest, &source, &name, &mut backoff).await,
            Err(e) => Stop::Redis(e),
        };
        errors.inc();
        match stopped {
            Stop::Redis(e) => tracing::warn!(source = name, error = %e, "lost Redis; reconnecting"),
            Stop::Store(e) => {
                tracing::warn!(source = name, error = %e, "a lifecycle event left pending for a later try")
            }
        }
        backoff.wait().await;
    }
}

/// A connection whose replies may take as long as a blocking read.
async fn connect(source: &RedisSource) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(source.url.as_str())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(
            Duration::from_millis(source.block_ms as u64) + Duration::from_secs(10),
        );
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let made: redis::RedisResult<()> = con
        .xgroup_create_mkstream(&source.stream, &source.group, "0")
        .await;
    match made {
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        other => other?,
    }
    Ok(con)
}

/// Turns until something fails.
async fn run<S: Store>(
    con: &mut MultiplexedConnection,
    ingest: &Ingest<S>,
    source: &RedisSource,
    name: &str,
    backoff: &mut Backoff,
) -> Stop {
    let backlog = ingest.metrics().backlog.with_label_values(&["redis"]);
    let mut backlog_read = Every::new(BACKLOG_EVERY);
    let mut claim =
        Every::new(Duration::from_millis(source.claim_idle_ms / 2).max(Duration::from_millis(100)));
    // Entries handed to this consumer and not acknowledged exist only after (re)connecting
    // (a take that failed, a restart under the same name) and after a claim: only then is
    // the own pending list read, until it is empty.
    let mut own_pending = true;
    loop {
        if backlog_read.due() {
            match lag(con, source).await {
                Ok(Some(n)) => backlog.set(i64::try_from(n).unwrap_or(i64::MAX)),
                Ok(None) => {}
                Err(e) => return e.into(),
            }
        }
        // Own pending entries first: handed to this consumer before and not acknowledged.
        if own_pending {
            let own = match read(con, source, "0", None).await {
                Ok(entries) => entries,
                Err(e) => return e.into(),
            };
            if !own.is_empty() {
                if let Err(stop) = take_all(con, ingest, source, name, own).await {
                    return stop;
                }
                backoff.reset();
                continue;
            }
            own_pending = false;
        }
        if claim.due() {
            match claim_idle(con, source).await {
                // Taken on the next turn, as this consumer's own.
                Ok(n) if n > 0 => {
                    own_pending = true;
                    tracing::info!(
                        source = name,
                        entries = n,
                        "claimed lifecycle events another consumer left pending"
                    );
                    continue;
                }
                Ok(_) => {}
                Err(e) => return e.into(),
            }
        }
        let fresh = match read(con, source, ">", Some(source.block_ms)).await {
            Ok(entries) => entries,
            Err(e) => return e.into(),
        };
        if let Err(stop) = take_all(con, ingest, source, name, fresh).await {
            return stop;
        }
        backoff.reset();
    }
}

/// `XREADGROUP … STREAMS <stream> <from>`: this consumer's pending entries (`0`) or new
/// ones (`>`, blocking up to `block_ms`).
async fn read(
    con: &mut MultiplexedConnection,
    source: &RedisSource,
    from: &str,
    block_ms: Option<usize>,
) -> redis::RedisResult<Vec<StreamId>> {
    let mut options = StreamReadOptions::default()
        .group(&source.group, &source.consumer)
        .count(source.batch);
    if let Some(ms) = block_ms {
        options = options.block(ms);
    }
    let reply: Option<StreamReadReply> = con
        .xread_options(&[&source.stream], &[from], &options)
        .await?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Claims entries idle with other consumers (they show up as this consumer's pending
/// entries); how many. Entries deleted from the stream meanwhile are dropped from the
/// group by Redis itself.
async fn claim_idle(
    con: &mut MultiplexedConnection,
    source: &RedisSource,
) -> redis::RedisResult<usize> {
    let mut start = String::from("0-0");
    let mut claimed = 0;
    loop {
        let reply: redis::streams::StreamAutoClaimReply = con
            .xautoclaim_options(
                &source.stream,
                &source.group,
                &source.consumer,
                source.claim_idle_ms,
                &start,
                StreamAutoClaimOptions::default()
                    .count(source.batch)
                    .with_justid(),
            )
            .await?;
        claimed += reply.claimed.len();
        if reply.next_stream_id == "0-0" || claimed >= source.batch {
            return Ok(claimed);
        }
        start = reply.next_stream_id;
    }
}

/// The group's `lag` (entries not yet delivered to it), when Redis can tell.
async fn lag(
    con: &mut MultiplexedConnection,
    source: &RedisSource,
) -> redis::RedisResult<Option<usize>> {
    let groups: redis::streams::StreamInfoGroupsReply = con.xinfo_groups(&source.stream).await?;
    Ok(groups
        .groups
        .into_iter()
        .find(|g| g.name == source.group)
        .and_then(|g| g.lag))
}

/// Takes `entries` in order, acknowledging each once taken.
async fn take_all<S: Store>(
    con: &mut MultiplexedConnection,
    ingest: &Ingest<S>,
    source: &RedisSource,
    name: &str,
    entries: Vec<StreamId>,
) -> Result<(), Stop> {
    for entry in entries {
        // A pending entry deleted from the stream comes back without fields: nothing to
        // take.
        if !entry.map.is_empty() {
            take(ingest, source, name, &entry)
                .await
                .map_err(Stop::Store)?;
        }
        let _: usize = con
            .xack(&source.stream, &source.group, &[&entry.id])
            .await?;
    }
    Ok(())
}

async fn take<S: Store>(
    ingest: &Ingest<S>,
    source: &RedisSource,
    name: &str,
    entry: &StreamId,
) -> Result<(), Unavailable> {
    // The entry id is `<milliseconds>-<sequence>`: when it entered the stream.
    let queued_at = entry
        .id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .unwrap_or_else(|| jiff::Timestamp::now().as_millisecond());
    match entry.map.get(&source.field).and_then(text) {
        Some(body) => ingest
            .take_queued(name, body.as_bytes(), queued_at)
            .await
            .map(|_| ()),
        None => {
            let fields: HashMap<&str, String> = entry
                .map
                .iter()
                .map(|(k, v)| (k.as_str(), text(v).unwrap_or_else(|| format!("{v:?}"))))
                .collect();
            let body = serde_json::to_vec(&fields).unwrap_or_default();
            let reason = format!(
                "stream entry {} has no `{}` field holding the event (fields: {})",
                entry.id,
                source.field,
                fields.keys().copied().collect::<Vec<_>>().join(", ")
            );
            ingest.refuse(name, &body, reason).await.map(|_| ())
        }
    }
}

/// A field's value as text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
