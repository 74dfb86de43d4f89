//! The Redis Stream sink: forwards the ledger, in order, to a stream (`XADD` with an
//! approximate `MAXLEN`), each entry carrying the record's `seq` and its sealed line; and
//! every signed checkpoint, as written, to a second stream (`<stream>:checkpoints`, field
//! `checkpoint`): a witness outside the ledger's directory. Given to `portcullis audit
//! verify` as another `checkpoints.jsonl`, it shows a tail cut back to an earlier
//! checkpoint (with the later checkpoints deleted), which the directory alone cannot.
//!
//! The ledger files are the spool ([`portcullis_ledger::tail`]): the sink only moves past a
//! record once Redis has taken it, so a Redis that goes away loses nothing — the sink retries with
//! backoff and resumes after the last `seq` the stream holds (from the start when the
//! stream came back empty). The request path never waits for Redis.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::AsyncCommands;

use portcullis_ledger::checkpoint;
use portcullis_ledger::tail::{
    SinkFormat, SinkStats, ledger_files, position_after, read_after, seq_of,
};

/// The stream the checkpoints of `stream`'s ledger go to.
pub fn checkpoint_stream(stream: &str) -> String {
    format!("{stream}:checkpoints")
}

/// The complete lines of the ledger's checkpoint file from byte `from`, with the offset
/// after each.
fn checkpoint_lines_from(dir: &Path, from: u64) -> Vec<(String, u64)> {
    use std::io::{BufRead, Seek};
    let Ok(mut file) = std::fs::File::open(dir.join(checkpoint::FILE)) else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut reader = std::io::BufReader::new(file);
    let mut lines = Vec::new();
    let mut offset = from;
    let mut line = String::new();
    while let Ok(n) = reader.read_line(&mut line) {
        // A line still being written (no end yet) waits for the next round.
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        offset += n as u64;
        let text = line.trim_end();
        if !text.is_empty() {
            lines.push((text.to_owned(), offset));
        }
        line.clear();
    }
    lines
}

/// Forwards the checkpoints the witness stream does not hold yet: those after byte `sent`
/// of the checkpoint file, which then moves past them.
async fn forward_checkpoints(
    conn: &mut redis::aio::MultiplexedConnection,
    dir: &Path,
    stream: &str,
    sent: &mut u64,
) -> Result<(), String> {
    let unchanged =
        std::fs::metadata(dir.join(checkpoint::FILE)).map_or(true, |m| m.len() <= *sent);
    if unchanged {
        return Ok(());
    }
    let new = checkpoint_lines_from(dir, *sent);
    let Some((_, end)) = new.last() else {
        return Ok(());
    };
    let end = *end;
    let mut pipe = redis::pipe();
    for (line, _) in &new {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("checkpoint")
            .arg(line)
            .ignore();
    }
    pipe.query_async::<()>(conn)
        .await
        .map_err(|e| e.to_string())?;
    *sent = end;
    Ok(())
}

/// Where to forward.
#[derive(Debug, Clone)]
pub struct RedisSinkConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// Approximate maximum length of the stream.
    pub maxlen: usize,
    /// The ledger line or an OCSF event in each entry's `record` field.
    pub format: SinkFormat,
}

/// Forwards the ledger in `dir` to Redis until the process ends.
pub async fn forward(dir: PathBuf, prefix: String, config: RedisSinkConfig, stats: Arc<SinkStats>) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        if let Err(e) = forward_once(&dir, &prefix, &config, &stats).await {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, stream = config.stream, "audit records not forwarded to Redis; retrying");
            backoff.wait().await;
        } else {
            backoff.reset();
        }
    }
}

async fn forward_once(
    dir: &Path,
    prefix: &str,
    config: &RedisSinkConfig,
    stats: &SinkStats,
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
    let mut cursor = position_after(&ledger_files(dir, prefix).unwrap_or_default(), last_seq);
    // The witness holds the checkpoint file up to the last line it has (all of it again
    // when it came back empty).
    let witness = checkpoint_stream(&config.stream);
    let last: redis::streams::StreamRangeReply = conn
        .xrevrange_count(&witness, "+", "-", 1)
        .await
        .map_err(|e| e.to_string())?;
    let held = last
        .ids
        .first()
        .and_then(|entry| entry.get::<String>("checkpoint"));
    let mut checkpoints_sent = held.map_or(0, |held| {
        checkpoint_lines_from(dir, 0)
            .into_iter()
            .find(|(line, _)| *line == held)
            .map_or(0, |(_, end)| end)
    });
    loop {
        forward_checkpoints(&mut conn, dir, &witness, &mut checkpoints_sent).await?;
        let files = ledger_files(dir, prefix).unwrap_or_default();
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
                .arg(config.format.body(line))
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
