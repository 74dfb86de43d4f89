//! The Redis Stream sink: forwards the ledger, in order, to a stream (`XADD` with an
//! approximate `MAXLEN`), each entry carrying the record's `seq` and its sealed line.
//!
//! The ledger files are the spool: the sink tails them and only moves past a record once
//! Redis has taken it, so a Redis that goes away loses nothing — the sink retries with
//! backoff and resumes after the last `seq` the stream holds (from the start when the
//! stream came back empty). The request path never waits for Redis.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;

/// Where to forward.
#[derive(Debug, Clone)]
pub struct RedisSinkConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// Approximate maximum length of the stream.
    pub maxlen: usize,
}

/// Counters of the sink.
#[derive(Debug, Default)]
pub struct RedisSinkStats {
    /// Records forwarded.
    pub forwarded: AtomicU64,
    /// Failed attempts (connection or command).
    pub errors: AtomicU64,
    /// The last `seq` the stream is known to hold.
    pub last_seq: AtomicU64,
}

/// The `seq` of a sealed line, read from its start (`{"seq":N,`).
fn seq_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest.find(',')?;
    rest.get(..end)?.parse().ok()
}

fn ledger_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{prefix}-")) && n.ends_with(".jsonl")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A position in the ledger files.
#[derive(Debug, Clone)]
struct Cursor {
    file: usize,
    offset: u64,
}

/// Complete lines after `cursor` (at most `limit`), with the cursor after each.
fn read_after(files: &[PathBuf], cursor: &Cursor, limit: usize) -> Vec<(String, Cursor)> {
    let mut out = Vec::new();
    let mut at = cursor.clone();
    while out.len() < limit {
        let Some(path) = files.get(at.file) else {
            break;
        };
        let Ok(mut file) = std::fs::File::open(path) else {
            break;
        };
        if file.seek(SeekFrom::Start(at.offset)).is_err() {
            break;
        }
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let mut progressed = false;
        while out.len() < limit {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    at.offset += n as u64;
                    progressed = true;
                    out.push((line.trim_end().to_owned(), at.clone()));
                }
                _ => break,
            }
        }
        // At the end of a file that has a successor, go on with the successor.
        if !progressed || out.len() < limit {
            if at.file + 1 < files.len() {
                at = Cursor {
                    file: at.file + 1,
                    offset: 0,
                };
                continue;
            }
            break;
        }
    }
    out
}

/// The position just after the record `seq` (the start when `seq` is 0 or not found).
fn position_after(files: &[PathBuf], seq: u64) -> Cursor {
    let start = Cursor { file: 0, offset: 0 };
    if seq == 0 {
        return start;
    }
    let mut cursor = start.clone();
    loop {
        let batch = read_after(files, &cursor, 4096);
        let Some((_, last)) = batch.last().cloned() else {
            return start;
        };
        for (line, after) in batch {
            if seq_of(&line) == Some(seq) {
                return after;
            }
        }
        cursor = last;
    }
}

/// Forwards the ledger in `dir` to Redis until the process ends.
pub async fn forward(
    dir: PathBuf,
    prefix: String,
    config: RedisSinkConfig,
    stats: Arc<RedisSinkStats>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if let Err(e) = forward_once(&dir, &prefix, &config, &stats).await {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, stream = config.stream, "audit records not forwarded to Redis; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        } else {
            backoff = Duration::from_millis(200);
        }
    }
}

async fn forward_once(
    dir: &Path,
    prefix: &str,
    config: &RedisSinkConfig,
    stats: &RedisSinkStats,
) -> Result<(), String> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let last: redis::streams::StreamRangeReply = conn
        .xrevrange_count(&config.stream, "+", "-", 1)
        .await
        .map_err(|e| e.to_string())?;
    let last_seq = last
        .ids
        .first()
        .and_then(|entry| entry.get::<String>("seq"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    stats.last_seq.store(last_seq, Ordering::Relaxed);
    let mut cursor = position_after(&ledger_files(dir, prefix), last_seq);
    loop {
        let files = ledger_files(dir, prefix);
        let batch = read_after(&files, &cursor, 256);
        let Some((_, after)) = batch.last().cloned() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut pipe = redis::pipe();
        let mut count = 0_u64;
        let mut newest = 0;
        for (line, _) in &batch {
            let Some(seq) = seq_of(line) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(&config.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(config.maxlen)
                .arg("*")
                .arg("seq")
                .arg(seq)
                .arg("record")
                .arg(line)
                .ignore();
            count += 1;
            newest = seq;
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        // Only now does the sink move past these records.
        cursor = after;
        stats.forwarded.fetch_add(count, Ordering::Relaxed);
        stats.last_seq.store(newest, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::seq_of;

    #[test]
    fn seq_is_read_from_the_line_start() {
        assert_eq!(seq_of(r#"{"seq":42,"instance":"i"}"#), Some(42));
        assert_eq!(seq_of(r#"{"instance":"i","seq":42}"#), None);
    }
}
