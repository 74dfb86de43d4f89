//! The application's side of the audit ledger: where it lives and what signs it (from
//! `audit`), the keeper thread that writes it, the sinks it is forwarded to, and its counts
//! in the metrics. What a decision record holds is the data plane's
//! ([`crate::data_plane::record`]); admin changes are recorded by the admin API into the
//! same ledger.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_ledger::tail::SinkStats;
use portcullis_ledger::writer::{Ledger, LedgerConfig};
use portcullis_ledger::{RedactionSalt, checkpoint, sha256_hex};
#[cfg(feature = "redis-sink")]
use portcullis_sinks::redis_sink::{self, RedisSinkConfig};
#[cfg(feature = "sqs-sink")]
use portcullis_sinks::sqs_sink::{self, SqsSinkConfig};

use crate::config::{AuditConfig, AuditRedisConfig, AuditSqsConfig, Config};
use crate::data_plane::record::{CONTEXT_KEYS, RecordSettings, Recorder};
use crate::metrics::Metrics;

/// A task forwarding the ledger to one sink.
pub type Forwarder = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A sink the ledger is forwarded to, as configured. A binary forwards to the kinds its
/// features build in; the configuration refuses the others (`config::validate`).
#[derive(Debug, Clone)]
enum Sink {
    /// A Redis Stream (feature `redis-sink`).
    Redis(AuditRedisConfig),
    /// An SQS queue (feature `sqs-sink`).
    Sqs(AuditSqsConfig),
}

impl Sink {
    /// The `sink` label of its metrics.
    fn name(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Sqs(_) => "sqs",
        }
    }
}

/// The configured sinks, each with its counts.
fn sinks(a: &AuditConfig) -> Vec<(Sink, Arc<SinkStats>)> {
    let redis = a.redis.iter().cloned().map(Sink::Redis);
    let sqs = a.sqs.iter().cloned().map(Sink::Sqs);
    redis
        .chain(sqs)
        .map(|sink| (sink, Arc::new(SinkStats::default())))
        .collect()
}

/// The open ledger of the process.
#[derive(Debug)]
pub struct Audit {
    ledger: Arc<Ledger>,
    /// Where the ledger lives (for the start-up log).
    pub dir: PathBuf,
    /// The checkpoint public key file.
    pub public_key: PathBuf,
    /// The sinks the ledger is forwarded to, with what each has done.
    sinks: Vec<(Sink, Arc<SinkStats>)>,
}

/// How decisions are recorded, as `audit` says; `salt` keys the redaction hashes.
fn record_settings(a: &AuditConfig, salt: RedactionSalt) -> RecordSettings {
    RecordSettings {
        on_full: a.on_full,
        max_wait: Duration::from_millis(a.max_wait_ms),
        record_public: a.record_public,
        allow_sample_rate: a.allow_sample_rate,
        salt,
        redact_principal: a.redact.outside_green("principal"),
        redact_context: CONTEXT_KEYS.map(|key| a.redact.outside_green(key)),
    }
}

/// The ledger directory of a configuration.
pub fn ledger_dir(config: &Config) -> PathBuf {
    config
        .audit
        .dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("audit"))
}

/// This process's name in audit records and in a Redis consumer group: `audit.instance`,
/// default `<hostname>-<pid>`.
pub(crate) fn instance_name(config: &Config) -> String {
    config.audit.instance.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| String::from("portcullis"));
        format!("{host}-{}", std::process::id())
    })
}

/// `path` made absolute against the working directory, without touching the file system
/// (neither may exist yet).
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// An opened ledger: the process's handle, the data plane's recorder, the keeper thread.
#[derive(Debug)]
pub struct Opened {
    /// The ledger, its sinks and counts.
    pub audit: Audit,
    /// What the data plane records decisions with.
    pub recorder: Recorder,
    /// The writer thread: it ends (after a last checkpoint) once every handle to the
    /// ledger is dropped; join it before the process exits.
    pub keeper: std::thread::JoinHandle<()>,
}

impl Audit {
    /// Opens the ledger of `config` and starts its keeper thread; `None` when auditing is
    /// off.
    pub fn open(config: &Config) -> Result<Option<Opened>, String> {
        let a = &config.audit;
        if !a.enabled {
            return Ok(None);
        }
        let dir = ledger_dir(config);
        portcullis_ledger::private_file::create_dir(&config.data_dir).map_err(|e| e.to_string())?;
        let key_file = a
            .checkpoint_key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("audit-checkpoint-key.pem"));
        // Whoever can rewrite the ledger must not find the key that signs it beside it.
        if absolute(&key_file).starts_with(absolute(&dir)) {
            return Err(format!(
                "audit.checkpoint_key_file: `{}` is inside the ledger directory `{}`; keep the signing key elsewhere",
                key_file.display(),
                dir.display()
            ));
        }
        let key = checkpoint::load_or_create_key(&key_file).map_err(|e| e.to_string())?;
        // A per-installation secret for redaction hashes, derived from the checkpoint key.
        let salt = RedactionSalt::new(&sha256_hex(
            &[b"portcullis-redaction\n".as_slice(), key.as_bytes()].concat(),
        ));
        let (ledger, writer) = Ledger::open(LedgerConfig {
            dir: dir.clone(),
            prefix: String::from("audit"),
            max_file_bytes: a.max_file_bytes,
            instance: instance_name(config),
            queue_capacity: a.queue_capacity,
            checkpoint_every: a.checkpoint_every,
            checkpoint_interval: Duration::from_secs(a.checkpoint_interval_seconds.max(1)),
            checkpoint_key: Some(key),
            fsync: a.fsync,
            stdout: a.stdout,
        })
        .map_err(|e| e.to_string())?;
        let recorder = Recorder::new(Arc::clone(&ledger), record_settings(a, salt));
        Ok(Some(Opened {
            audit: Self {
                ledger,
                public_key: checkpoint::public_key_path(&key_file),
                sinks: sinks(a),
                dir,
            },
            recorder,
            keeper: writer,
        }))
    }

    /// The tasks forwarding the ledger to each configured sink (Redis, SQS); spawn them on
    /// a runtime.
    pub fn forwarders(&self) -> Vec<Forwarder> {
        self.sinks
            .iter()
            .filter_map(|(sink, stats)| self.forwarder(sink, stats))
            .collect()
    }

    /// The task forwarding the ledger to `sink`, if this binary has that kind.
    fn forwarder(&self, sink: &Sink, stats: &Arc<SinkStats>) -> Option<Forwarder> {
        match sink {
            #[cfg(feature = "redis-sink")]
            Sink::Redis(r) => Some(Box::pin(redis_sink::forward(
                self.dir.clone(),
                String::from("audit"),
                RedisSinkConfig {
                    url: r.url.clone(),
                    stream: r.stream.clone(),
                    maxlen: r.maxlen,
                    format: r.format,
                },
                Arc::clone(stats),
            ))),
            #[cfg(feature = "sqs-sink")]
            Sink::Sqs(q) => Some(Box::pin(sqs_sink::forward(
                self.dir.clone(),
                String::from("audit"),
                SqsSinkConfig {
                    queue_url: q.queue_url.clone(),
                    region: q.region.clone(),
                    endpoint_url: q.endpoint_url.clone(),
                    format: q.format,
                },
                Arc::clone(stats),
            ))),
            // Sinks this binary is built without: refused by the configuration's
            // validation, so never here; counted as failing if they were.
            #[cfg(not(feature = "redis-sink"))]
            Sink::Redis(r) => {
                stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(stream = r.stream, "built without the Redis sink");
                None
            }
            #[cfg(not(feature = "sqs-sink"))]
            Sink::Sqs(q) => {
                stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(queue_url = q.queue_url, "built without the SQS sink");
                None
            }
        }
    }

    /// The ledger, for other writers of the process (admin changes).
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Copies the ledger's counters into `metrics` (at scrape time).
    pub fn export_metrics(&self, metrics: &Metrics) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.ledger.stats();
        let sync = |counter: &prometheus::IntCounter, value: u64| {
            counter.inc_by(value.saturating_sub(counter.get()));
        };
        sync(&metrics.audit.records, s.written.load(Relaxed));
        sync(&metrics.audit.dropped, s.dropped.load(Relaxed));
        sync(&metrics.audit.refused, s.refused.load(Relaxed));
        sync(&metrics.audit.write_errors, s.write_errors.load(Relaxed));
        sync(&metrics.audit.batches, s.batches.load(Relaxed));
        let seconds = s.write_micros.load(Relaxed) as f64 / 1e6;
        let counted = metrics.audit.write_seconds.get();
        if seconds > counted {
            metrics.audit.write_seconds.inc_by(seconds - counted);
        }
        metrics
            .audit
            .queue_depth
            .set(i64::try_from(self.ledger.queue_depth()).unwrap_or(i64::MAX));
        for (sink, stats) in &self.sinks {
            sync(
                &metrics
                    .audit
                    .sink_forwarded
                    .with_label_values(&[sink.name()]),
                stats.forwarded.load(Relaxed),
            );
            sync(
                &metrics.audit.sink_errors.with_label_values(&[sink.name()]),
                stats.errors.load(Relaxed),
            );
        }
    }
}
