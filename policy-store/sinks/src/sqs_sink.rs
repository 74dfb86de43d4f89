//! The SQS sink: forwards the ledger, in order, to an SQS queue — one message per record,
//! its sealed line as the body and its `seq` as a message attribute, ten to a batch.
//!
//! The ledger files are the spool ([`portcullis_ledger::tail`]). SQS cannot say what it
//! already holds, so the sink keeps its position in a file beside the ledger
//! (`<prefix>.sqs-cursor`: the last `seq` SQS accepted), replaced after each accepted
//! batch; a restart resumes there. Failures are retried with backoff while records wait in
//! the files; the request path never waits for SQS. Delivery is at least once: a crash
//! between an accepted batch and its cursor sends that batch again. On a FIFO queue
//! (`….fifo`) the deduplication id is the record's hash, so SQS drops such repeats within
//! its five-minute window, and the group id is the record's instance, so each writer's
//! records keep their order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use portcullis_ledger::tail::{
    SinkFormat, SinkStats, ledger_files, position_after, read_after, seq_of,
};
use portcullis_ledger::unseal;

/// Largest message and batch SQS takes (256 KiB).
const MAX_BATCH_BYTES: usize = 262_144;
/// Messages per `SendMessageBatch`.
const MAX_BATCH: usize = 10;

/// Where to forward.
#[derive(Debug, Clone)]
pub struct SqsSinkConfig {
    /// The queue URL.
    pub queue_url: String,
    /// The AWS region; default: the environment's (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Another endpoint (LocalStack, moto, a VPC endpoint); default: AWS's.
    pub endpoint_url: Option<String>,
    /// The ledger line or an OCSF event as each message's body.
    pub format: SinkFormat,
}

/// The cursor file of the ledger `prefix` in `dir`.
pub fn cursor_file(dir: &Path, prefix: &str) -> PathBuf {
    dir.join(format!("{prefix}.sqs-cursor"))
}

fn read_cursor(file: &Path) -> Result<u64, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("`{}`: not a seq: `{}`", file.display(), text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("`{}`: cannot read: {e}", file.display())),
    }
}

/// Replaces the cursor atomically (a crash leaves the old one or the new one).
fn write_cursor(file: &Path, seq: u64) -> Result<(), String> {
    let partial = file.with_extension("sqs-cursor.partial");
    std::fs::write(&partial, format!("{seq}\n"))
        .and_then(|()| std::fs::rename(&partial, file))
        .map_err(|e| format!("`{}`: cannot write: {e}", file.display()))
}

/// An SQS client for `region` (default: the environment's: `AWS_REGION`, profile, IMDS) at
/// `endpoint_url` (default: AWS's; or LocalStack, moto, a VPC endpoint): rustls with ring
/// (no second crypto library), the default credential chain. The event sources use it too.
pub async fn client(region: Option<&str>, endpoint_url: Option<&str>) -> aws_sdk_sqs::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    aws_sdk_sqs::Client::new(&loader.load().await)
}

/// Forwards the ledger in `dir` to SQS until the process ends.
pub async fn forward(dir: PathBuf, prefix: String, config: SqsSinkConfig, stats: Arc<SinkStats>) {
    let client = client(config.region.as_deref(), config.endpoint_url.as_deref()).await;
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        if let Err(e) = forward_once(&client, &dir, &prefix, &config, &stats).await {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, queue = config.queue_url, "audit records not forwarded to SQS; retrying");
            backoff.wait().await;
        } else {
            backoff.reset();
        }
    }
}

/// One message: the sealed line, its seq and, on FIFO queues, group and deduplication ids.
fn entry(
    index: usize,
    line: &str,
    fifo: bool,
    format: SinkFormat,
) -> Result<SendMessageBatchRequestEntry, String> {
    let seq = seq_of(line).ok_or("a ledger line without its seq")?;
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(format.body(line))
        .message_attributes(
            "seq",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(seq.to_string())
                .build()
                .map_err(|e| e.to_string())?,
        );
    if fifo {
        let (canonical, hash) = unseal(line).ok_or("a ledger line without its hash")?;
        let instance = serde_json::from_str::<portcullis_ledger::Record>(&canonical)
            .map_err(|e| e.to_string())?
            .instance;
        entry = entry
            .message_group_id(instance)
            .message_deduplication_id(hash);
    }
    entry.build().map_err(|e| e.to_string())
}

async fn forward_once(
    client: &aws_sdk_sqs::Client,
    dir: &Path,
    prefix: &str,
    config: &SqsSinkConfig,
    stats: &SinkStats,
) -> Result<(), String> {
    let fifo = config.queue_url.ends_with(".fifo");
    let cursor_file = cursor_file(dir, prefix);
    let sent = read_cursor(&cursor_file)?;
    stats.last_seq.store(sent, Ordering::Relaxed);
    let mut cursor = position_after(&ledger_files(dir, prefix).map_err(|e| e.to_string())?, sent);
    loop {
        let files = ledger_files(dir, prefix).map_err(|e| e.to_string())?;
        let mut batch = read_after(&files, &cursor, MAX_BATCH);
        // One request carries at most 256 KiB.
        let mut bytes = 0;
        let fits = batch
            .iter()
            .take_while(|(line, _)| {
                bytes += line.len();
                bytes <= MAX_BATCH_BYTES
            })
            .count();
        if fits == 0 && !batch.is_empty() {
            return Err(format!(
                "a ledger record of {} bytes is larger than an SQS message can be",
                batch.first().map_or(0, |(line, _)| line.len())
            ));
        }
        batch.truncate(fits);
        let Some((last_line, after)) = batch.last().cloned() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, (line, _))| entry(i, line, fifo, config.format))
            .collect::<Result<Vec<_>, _>>()?;
        let count = entries.len() as u64;
        let answer = client
            .send_message_batch()
            .queue_url(&config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        if let Some(failed) = answer.failed().first() {
            return Err(format!(
                "SQS refused {} of {count} records, e.g. `{}`: {}",
                answer.failed().len(),
                failed.code(),
                failed.message().unwrap_or_default()
            ));
        }
        let newest = seq_of(&last_line).unwrap_or_default();
        write_cursor(&cursor_file, newest)?;
        // Only now does the sink move past these records.
        cursor = after;
        stats.forwarded.fetch_add(count, Ordering::Relaxed);
        stats.last_seq.store(newest, Ordering::Relaxed);
    }
}
