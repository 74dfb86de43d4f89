//! The data plane's side of the audit ledger (`portcullis_ledger`): which
//! requests leave a record, what goes into it, and what happens when the ledger cannot keep
//! up — by default the request waits, then is refused (503); dropping must be configured
//! and is counted.
//!
//! Recorded: every decision (allow, deny, shadow deny) and every refusal (bad credentials,
//! ambiguous target, no route). Not recorded: public routes (unless `audit.record_public`)
//! and a configured share of allows (`audit.allow_sample_rate`). Never recorded: tokens,
//! the `Authorization` header, request bodies. Context is redacted by band: on AMBER and RED
//! routes the client address and device id are replaced by a keyed hash by default;
//! `audit.redact` names what is hashed or left out (the principal too).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_ledger::tail::SinkStats;
use portcullis_ledger::writer::{AppendError, Ledger, LedgerConfig};
use portcullis_ledger::{
    EncodeError, EncodedEntry, EntryRef, RecordKind, Redaction, RedactionSalt, band_redacts,
    checkpoint, sha256_hex, timestamp_now,
};
#[cfg(feature = "redis-sink")]
use portcullis_sinks::redis_sink::{self, RedisSinkConfig};
#[cfg(feature = "sqs-sink")]
use portcullis_sinks::sqs_sink::{self, SqsSinkConfig};
use rand::Rng;

use crate::config::{AuditConfig, AuditOnFull, AuditRedisConfig, AuditSqsConfig, Config};
use crate::data_plane::Verdict;
use crate::data_plane::respond::Rejection;
use crate::metrics::{METRICS, Outcome};

/// The context members of a decision record, in the order its map is written.
const CONTEXT_KEYS: [&str; 7] = [
    "band",
    "device_id",
    "hour",
    "ip",
    "mfa",
    "risk_score",
    "weekday",
];

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

/// The ledger as the data plane uses it.
#[derive(Debug)]
pub struct Audit {
    ledger: Arc<Ledger>,
    on_full: AuditOnFull,
    max_wait: Duration,
    record_public: bool,
    allow_sample_rate: f64,
    salt: RedactionSalt,
    /// What AMBER and RED routes do with the principal and with each of [`CONTEXT_KEYS`],
    /// decided once from `audit.redact`.
    redact_principal: Redaction,
    redact_context: [Redaction; CONTEXT_KEYS.len()],
    /// Where the ledger lives (for the start-up log).
    pub dir: PathBuf,
    /// The checkpoint public key file.
    pub public_key: PathBuf,
    /// The sinks the ledger is forwarded to, with what each has done.
    sinks: Vec<(Sink, Arc<SinkStats>)>,
}

/// The ledger directory of a configuration.
pub fn ledger_dir(config: &Config) -> PathBuf {
    config
        .audit
        .dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("audit"))
}

fn instance_name(config: &Config) -> String {
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

impl Audit {
    /// Opens the ledger of `config` and starts its keeper thread; `None` when auditing is
    /// off. The keeper ends (after a last checkpoint) once every handle to the ledger is
    /// dropped; join it before the process exits.
    pub fn open(config: &Config) -> Result<Option<(Self, std::thread::JoinHandle<()>)>, String> {
        let a = &config.audit;
        if !a.enabled {
            return Ok(None);
        }
        let dir = ledger_dir(config);
        portcullis_ledger::private_file::create_dir(&config.data_dir)?;
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
        let key = checkpoint::load_or_create_key(&key_file)?;
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
        })?;
        Ok(Some((
            Self {
                ledger,
                on_full: a.on_full,
                max_wait: Duration::from_millis(a.max_wait_ms),
                record_public: a.record_public,
                allow_sample_rate: a.allow_sample_rate,
                salt,
                redact_principal: a.redact.outside_green("principal"),
                redact_context: CONTEXT_KEYS.map(|key| a.redact.outside_green(key)),
                public_key: checkpoint::public_key_path(&key_file),
                sinks: sinks(a),
                dir,
            },
            writer,
        )))
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

    /// Whether this outcome is recorded.
    fn keeps(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Public => self.record_public,
            Outcome::Allowed => {
                self.allow_sample_rate >= 1.0
                    || rand::thread_rng().gen_bool(self.allow_sample_rate.clamp(0.0, 1.0))
            }
            _ => true,
        }
    }

    /// Records a checked request before it is answered or forwarded. `Err` is the refusal
    /// to send instead (the ledger could not take the record and dropping is not allowed).
    pub async fn record(
        &self,
        verdict: &Verdict,
        route: &str,
        band: &str,
        trace_id: Option<&str>,
    ) -> Result<(), Rejection> {
        let outcome = verdict.outcome();
        if !self.keeps(outcome) {
            return Ok(());
        }
        let entry = match self.encode(verdict, outcome, route, band, trace_id) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(error = %e, "decision not recorded; request refused");
                return Err(Rejection::Unavailable("audit_unavailable"));
            }
        };
        match self.on_full {
            AuditOnFull::Drop => {
                if !self.ledger.append_nowait(entry) {
                    tracing::warn!("audit queue full: record dropped (audit.on_full = drop)");
                }
                Ok(())
            }
            AuditOnFull::Wait => match self.ledger.append(entry, self.max_wait).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "decision not recorded; request refused");
                    Err(Rejection::Unavailable(match e {
                        AppendError::Full => "audit_queue_full",
                        AppendError::Write(_) | AppendError::Closed => "audit_unavailable",
                    }))
                }
            },
        }
    }

    /// The record of a checked request, encoded from the request's own parts (nothing is
    /// copied into an intermediate entry: every request that is kept takes one).
    fn encode(
        &self,
        verdict: &Verdict,
        outcome: Outcome,
        route: &str,
        band: &str,
        trace_id: Option<&str>,
    ) -> Result<EncodedEntry, EncodeError> {
        let refusal = verdict.reason();
        let decision = match outcome {
            Outcome::Allowed => "allow",
            Outcome::Public => "public",
            Outcome::ShadowDenied => "shadow_deny",
            Outcome::Denied => match refusal {
                Some(Rejection::Denied { .. }) => "deny",
                _ => "refused",
            },
            _ => "refused",
        };
        let ts = timestamp_now();
        let mut entry = EntryRef {
            ts: &ts,
            kind: RecordKind::Decision,
            decision_id: verdict.decision_id(),
            decision: Some(decision),
            reason: refusal.map(Rejection::reason),
            route: Some(route),
            trace_id,
            ..EntryRef::default()
        };
        let Some(d) = verdict.subject() else {
            return entry.encode();
        };
        let redacting = band_redacts(band);
        let principal = self
            .redact_principal
            .when(redacting)
            .apply(Cow::Borrowed(d.principal.as_str()), &self.salt);
        entry.principal = principal.as_deref();
        entry.action = Some(&d.action);
        entry.resource = Some(&d.resource);
        entry.policies = &d.policies;
        entry.errors = &d.errors;
        entry.latency_us = Some(u64::try_from(d.elapsed.as_micros()).unwrap_or(u64::MAX));
        let f = &d.facts;
        let (mut hour, mut weekday, mut risk) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        // The values of `CONTEXT_KEYS`, in their order.
        let values = [
            Some(band),
            f.device_id.as_deref(),
            Some(hour.format(f.local_time.hour)),
            f.ip.as_deref(),
            Some(if f.mfa { "true" } else { "false" }),
            Some(risk.format(f.risk_score)),
            Some(weekday.format(f.local_time.weekday)),
        ];
        let mut recorded = Vec::with_capacity(CONTEXT_KEYS.len());
        for ((key, value), redaction) in CONTEXT_KEYS
            .into_iter()
            .zip(values)
            .zip(self.redact_context)
        {
            let value = value.and_then(|v| {
                redaction
                    .when(redacting)
                    .apply(Cow::Borrowed(v), &self.salt)
            });
            if let Some(value) = value {
                recorded.push((key, value));
            }
        }
        entry.context = &recorded;
        entry.encode()
    }

    /// Copies the ledger's counters into the Prometheus metrics (at scrape time).
    pub fn export_metrics(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.ledger.stats();
        let sync = |counter: &prometheus::IntCounter, value: u64| {
            counter.inc_by(value.saturating_sub(counter.get()));
        };
        sync(&METRICS.audit.records, s.written.load(Relaxed));
        sync(&METRICS.audit.dropped, s.dropped.load(Relaxed));
        sync(&METRICS.audit.refused, s.refused.load(Relaxed));
        sync(&METRICS.audit.write_errors, s.write_errors.load(Relaxed));
        sync(&METRICS.audit.batches, s.batches.load(Relaxed));
        let seconds = s.write_micros.load(Relaxed) as f64 / 1e6;
        let counted = METRICS.audit.write_seconds.get();
        if seconds > counted {
            METRICS.audit.write_seconds.inc_by(seconds - counted);
        }
        METRICS
            .audit
            .queue_depth
            .set(i64::try_from(self.ledger.queue_depth()).unwrap_or(i64::MAX));
        for (sink, stats) in &self.sinks {
            sync(
                &METRICS
                    .audit
                    .sink_forwarded
                    .with_label_values(&[sink.name()]),
                stats.forwarded.load(Relaxed),
            );
            sync(
                &METRICS.audit.sink_errors.with_label_values(&[sink.name()]),
                stats.errors.load(Relaxed),
            );
        }
    }
}
