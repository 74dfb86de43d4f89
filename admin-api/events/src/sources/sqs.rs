//! The SQS source: long polls a queue, takes each message in the order received, deletes
//! it only once taken, and extends the visibility of the messages of a batch still being
//! taken, so a slow batch is not handed to another consumer meanwhile. A message left by
//! a failure (the store or the ledger away) comes back once its visibility ends; the
//! queue's redrive policy, when it has one, moves it to its own dead-letter queue after
//! `maxReceiveCount` tries. Messages delivered by an SNS subscription (seed 004's topics)
//! are unwrapped by [`crate::envelope`]. The same consumer feeds lifecycle events to
//! [`Ingest`] and other services' audit events to
//! [`ExternalAudit`](crate::external_audit::ExternalAudit): each a [`Taker`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use portcullis_sinks::backoff::Backoff;
use portcullis_store::Store;

use super::{BACKLOG_EVERY, Every};
use crate::{EventMetrics, Ingest, Unavailable};

/// What a queue's messages are taken into.
pub trait Taker: Send + Sync {
    /// The kind of source, in source names and metric labels (`sqs`, `audit-sqs`).
    const KIND: &'static str;

    /// Where the consumer counts its errors and the backlog.
    fn metrics(&self) -> &EventMetrics;

    /// Takes one message from `source`, which entered the queue at `queued_at` (Unix
    /// milliseconds). `Err`: not taken now; it stays in the queue.
    fn take(
        &self,
        source: &str,
        body: &[u8],
        queued_at: i64,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;
}

impl<S: Store> Taker for Ingest<S> {
    const KIND: &'static str = "sqs";

    fn metrics(&self) -> &EventMetrics {
        Ingest::metrics(self)
    }

    async fn take(&self, source: &str, body: &[u8], queued_at: i64) -> Result<(), Unavailable> {
        self.take_queued(source, body, queued_at).await.map(|_| ())
    }
}

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct SqsSource {
    /// The queue URL.
    pub queue_url: String,
    /// The region; default: the environment's.
    pub region: Option<String>,
    /// Another endpoint (LocalStack, moto, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Messages per receive, 1 to 10.
    pub batch: i32,
    /// Long-poll wait per receive, 0 to 20 seconds.
    pub wait_seconds: i32,
    /// How long a received message stays hidden from other consumers; renewed while its
    /// batch is still being taken.
    pub visibility_timeout_seconds: i32,
}

impl SqsSource {
    /// The source name in dead letters, the ledger and logs: `<kind>:<queue name>`.
    pub fn name(&self, kind: &str) -> String {
        let queue = self.queue_url.rsplit('/').next().unwrap_or(&self.queue_url);
        format!("{kind}:{queue}")
    }
}

/// Consumes `source` into `taker` until the task is dropped, with the credentials of the
/// default AWS chain.
pub async fn consume<T: Taker>(taker: T, source: SqsSource) {
    let client = portcullis_sinks::sqs_sink::client(
        source.region.as_deref(),
        source.endpoint_url.as_deref(),
    )
    .await;
    consume_with(client, taker, source).await;
}

/// Consumes `source` with `client` (built elsewhere: the tests' own credentials).
pub async fn consume_with<T: Taker>(client: aws_sdk_sqs::Client, taker: T, source: SqsSource) {
    let name = source.name(T::KIND);
    tracing::info!(source = name, queue = source.queue_url, "consuming");
    let errors = taker.metrics().source_errors.with_label_values(&[T::KIND]);
    let backlog = taker.metrics().backlog.with_label_values(&[T::KIND]);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut backlog_read = Every::new(BACKLOG_EVERY);
    loop {
        if backlog_read.due() {
            match waiting(&client, &source.queue_url).await {
                Ok(n) => backlog.set(n),
                Err(e) => {
                    tracing::warn!(source = name, error = e, "cannot read the queue's backlog")
                }
            }
        }
        let received = client
            .receive_message()
            .queue_url(&source.queue_url)
            .max_number_of_messages(source.batch)
            .wait_time_seconds(source.wait_seconds)
            .visibility_timeout(source.visibility_timeout_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await;
        let messages = match received {
            Ok(r) => r.messages.unwrap_or_default(),
            Err(e) => {
                errors.inc();
                tracing::warn!(source = name, error = %DisplayErrorContext(e), "cannot receive from the queue; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let (taken, stopped) = take_batch(&client, &taker, &source, &name, &messages).await;
        if let Err(e) = delete(
            &client,
            &source.queue_url,
            messages.get(..taken).unwrap_or_default(),
        )
        .await
        {
            // Not lost: they come back once their visibility ends, and are duplicates then.
            errors.inc();
            tracing::warn!(
                source = name,
                error = e,
                "taken messages not deleted from the queue; they will come back as duplicates"
            );
        }
        match stopped {
            None => backoff.reset(),
            Some(e) => {
                errors.inc();
                tracing::warn!(source = name, error = %e, left = messages.len() - taken, "messages left in the queue for a later try");
                backoff.wait().await;
            }
        }
    }
}

/// Takes `messages` in order while renewing the visibility of those not yet taken; how
/// many were taken, and the failure that stopped it early.
async fn take_batch<T: Taker>(
    client: &aws_sdk_sqs::Client,
    taker: &T,
    source: &SqsSource,
    name: &str,
    messages: &[Message],
) -> (usize, Option<Unavailable>) {
    let taken = AtomicUsize::new(0);
    let work = async {
        for m in messages {
            let queued_at = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or_else(|| jiff::Timestamp::now().as_millisecond());
            let body = m.body().unwrap_or_default().as_bytes();
            if let Err(e) = taker.take(name, body, queued_at).await {
                return Some(e);
            }
            taken.fetch_add(1, Ordering::Relaxed);
        }
        None
    };
    tokio::pin!(work);
    // Renewed at half the timeout, for as long again.
    let period = Duration::from_secs(
        u64::try_from(source.visibility_timeout_seconds.max(2)).unwrap_or(2) / 2,
    );
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            stopped = &mut work => return (taken.load(Ordering::Relaxed), stopped),
            _ = renew.tick() => {
                let left = messages.get(taken.load(Ordering::Relaxed)..).unwrap_or_default();
                if let Err(e) = extend(client, &source.queue_url, left, source.visibility_timeout_seconds).await {
                    taker.metrics().source_errors.with_label_values(&[T::KIND]).inc();
                    tracing::warn!(source = name, error = e, "cannot extend the visibility of a slow batch");
                }
            }
        }
    }
}

/// Deletes taken messages, ten to a request.
async fn delete(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    messages: &[Message],
) -> Result<(), String> {
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        if let Some(failed) = out.failed().first() {
            return Err(format!(
                "SQS refused to delete {} messages, e.g.: {}",
                out.failed().len(),
                failed.message().unwrap_or(failed.code())
            ));
        }
    }
    Ok(())
}

/// Hides `messages` for `seconds` more.
async fn extend(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    messages: &[Message],
    seconds: i32,
) -> Result<(), String> {
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .visibility_timeout(seconds)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
    }
    Ok(())
}

/// The queue's `ApproximateNumberOfMessages`.
async fn waiting(client: &aws_sdk_sqs::Client, queue_url: &str) -> Result<i64, String> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| String::from("the queue did not say how many messages it holds"))
}
