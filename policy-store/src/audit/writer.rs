//! The ledger writer: one thread per process owns the files and the chain. Callers hand it
//! entries through a bounded queue; it numbers them, chains them, writes them in batches and
//! only then acknowledges them, so a record is on its way to disk before the request it
//! describes is answered.
//!
//! When the queue is full the default is back-pressure: [`Ledger::append`] waits up to the
//! caller's deadline and then fails (the data plane answers 503). Dropping instead must be
//! chosen ([`Ledger::append_nowait`]) and is counted.
//!
//! Handing entries over costs a thread switch each time the writer is woken, so appenders
//! do not wake it on every entry: an entry goes into the queue, its appender yields once to
//! its runtime (the other requests ready there append too), and only then rings the
//! writer, which takes everything queued in one batch. One connection pays a yield; many
//! share a batch. (Woken by the queue itself, the writer used to write 1.04 records per
//! batch under 16 connections: a switch each way per request.)
//!
//! Written with `write(2)`: a record survives the process being killed; with `fsync` it also
//! survives the machine going down, at a cost per batch. On start the writer continues the
//! chain from the last complete record; a line torn by a crash (never acknowledged) is cut.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, Checkpoint};
use super::{Entry, GENESIS, Record, seal, unseal};

/// Writer settings.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Directory of the ledger files.
    pub dir: PathBuf,
    /// File name prefix (`audit` → `audit-000000000001.jsonl`).
    pub prefix: String,
    /// Start a new file past this size.
    pub max_file_bytes: u64,
    /// This process's name in every record.
    pub instance: String,
    /// Queue length between the request path and the writer.
    pub queue_capacity: usize,
    /// Sign a checkpoint every this many records (and when the writer stops).
    pub checkpoint_every: u64,
    /// Also sign one when this long passed since the last and records were written.
    pub checkpoint_interval: Duration,
    /// The checkpoint key; `None` writes no checkpoints.
    pub checkpoint_key: Option<SigningKey>,
    /// `fsync` after every batch.
    pub fsync: bool,
    /// Also print every record on stdout.
    pub stdout: bool,
}

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The queue stayed full past the deadline.
    #[error("the audit queue is full")]
    Full,
    /// The writer could not write.
    #[error("the audit ledger cannot be written: {0}")]
    Write(String),
    /// The writer has stopped.
    #[error("the audit writer has stopped")]
    Closed,
}

struct Pending {
    entry: Entry,
    done: Option<oneshot::Sender<Result<u64, String>>>,
}

/// Counters of a ledger.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Records written.
    pub written: AtomicU64,
    /// Entries dropped because the queue was full (only with [`Ledger::append_nowait`]).
    pub dropped: AtomicU64,
    /// Appends refused because the queue stayed full (back-pressure).
    pub refused: AtomicU64,
    /// Failed writes.
    pub write_errors: AtomicU64,
    /// Total microseconds spent writing batches.
    pub write_micros: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
}

/// The handle the request path appends through.
#[derive(Debug)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    /// Rings the writer; it does not wait on the queue itself.
    wake: Arc<tokio::sync::Notify>,
    stats: Arc<LedgerStats>,
    dir: PathBuf,
    prefix: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (or continues) the ledger in `config.dir` and starts the writer thread, which
    /// runs until every `Ledger` handle is dropped.
    pub fn open(config: LedgerConfig) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), String> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("`{}`: cannot create: {e}", config.dir.display()))?;
        let tail = recover(&config.dir, &config.prefix)?;
        let (dir, prefix) = (config.dir.clone(), config.prefix.clone());
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let wake = Arc::new(tokio::sync::Notify::new());
        let stats = Arc::new(LedgerStats::default());
        let mut writer = Writer::new(config, tail, Arc::clone(&stats))?;
        let writer_wake = Arc::clone(&wake);
        let thread = std::thread::Builder::new()
            .name(String::from("portcullis-audit"))
            .spawn(move || writer.run(rx, &writer_wake))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok((
            Arc::new(Self {
                tx,
                wake,
                stats,
                dir,
                prefix,
            }),
            thread,
        ))
    }

    /// Appends and waits until the record is written. Waits at most `deadline` for room in
    /// the queue; past it, [`AppendError::Full`].
    pub async fn append(&self, entry: Entry, deadline: Duration) -> Result<u64, AppendError> {
        let (done, written) = oneshot::channel();
        let pending = Pending {
            entry,
            done: Some(done),
        };
        match self.tx.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(AppendError::Closed),
            Err(mpsc::error::TrySendError::Full(pending)) => {
                match tokio::time::timeout(deadline, self.tx.send(pending)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(AppendError::Closed),
                    Err(_) => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        return Err(AppendError::Full);
                    }
                }
            }
        }
        // Let the other requests ready on this runtime queue theirs, then ring once for all.
        tokio::task::yield_now().await;
        self.wake.notify_one();
        match written.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AppendError::Write(e)),
            Err(_) => Err(AppendError::Closed),
        }
    }

    /// Appends without waiting; a full queue drops the entry (counted). Returns whether it
    /// was queued.
    pub fn append_nowait(&self, entry: Entry) -> bool {
        let queued = self.tx.try_send(Pending { entry, done: None }).is_ok();
        self.wake.notify_one();
        if !queued {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Entries waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The counters.
    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    /// Reads this ledger's records (see [`super::query`]); blocking file I/O.
    pub fn query(
        &self,
        query: &super::query::AuditQuery,
    ) -> Result<super::query::AuditPage, String> {
        super::query::query(&self.dir, &self.prefix, query)
    }
}

/// Where the chain stands.
#[derive(Debug, Clone)]
struct Tail {
    seq: u64,
    hash: String,
    file: Option<PathBuf>,
}

/// Finds the last complete record; cuts a torn last line.
fn recover(dir: &Path, prefix: &str) -> Result<Tail, String> {
    let files = super::tail::ledger_files(dir, prefix)?;
    for file in files.iter().rev() {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .map_err(|e| format!("`{}`: cannot open: {e}", file.display()))?;
        let mut last: Option<String> = None;
        let mut complete_len: u64 = 0;
        let mut reader = BufReader::new(&mut f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("`{}`: cannot read: {e}", file.display()))?;
            if n == 0 {
                break;
            }
            if line.ends_with('\n') {
                complete_len += n as u64;
                last = Some(line.trim_end().to_owned());
            } else {
                break;
            }
        }
        drop(reader);
        let size = f.metadata().map(|m| m.len()).unwrap_or(complete_len);
        if size > complete_len {
            f.set_len(complete_len)
                .map_err(|e| format!("`{}`: cannot cut the torn last line: {e}", file.display()))?;
            tracing::warn!(file = %file.display(), bytes = size - complete_len, "cut a torn last audit line (it was never acknowledged)");
        }
        if let Some(line) = last {
            let (canonical, hash) = unseal(&line).ok_or_else(|| {
                format!("`{}`: the last line is not a sealed record", file.display())
            })?;
            let record: Record = serde_json::from_str(&canonical).map_err(|e| {
                format!("`{}`: the last record does not parse: {e}", file.display())
            })?;
            return Ok(Tail {
                seq: record.seq,
                hash: hash.to_owned(),
                file: Some(file.clone()),
            });
        }
    }
    Ok(Tail {
        seq: 0,
        hash: String::from(GENESIS),
        file: None,
    })
}

struct Writer {
    config: LedgerConfig,
    tail: Tail,
    file: File,
    path: PathBuf,
    size: u64,
    checkpoints: Option<File>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    stats: Arc<LedgerStats>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("`{}`: cannot open for appending: {e}", path.display()))
}

impl Writer {
    fn new(config: LedgerConfig, tail: Tail, stats: Arc<LedgerStats>) -> Result<Self, String> {
        let path = match &tail.file {
            Some(p) => p.clone(),
            None => config
                .dir
                .join(format!("{}-{:012}.jsonl", config.prefix, tail.seq + 1)),
        };
        let mut file = open_append(&path)?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| format!("`{}`: {e}", path.display()))?;
        let checkpoints = match &config.checkpoint_key {
            Some(_) => Some(open_append(&config.dir.join(checkpoint::FILE))?),
            None => None,
        };
        Ok(Self {
            config,
            tail,
            file,
            path,
            size,
            checkpoints,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            stats,
        })
    }

    fn run(&mut self, rx: mpsc::Receiver<Pending>, wake: &tokio::sync::Notify) {
        // A runtime of its own, only to wait on the queue with a timeout (time-based
        // checkpoints); all file I/O is plain blocking I/O on this thread.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the audit writer cannot start");
                return;
            }
        };
        runtime.block_on(self.serve(rx, wake));
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<Pending>, wake: &tokio::sync::Notify) {
        // A checkpoint at every start: a ledger that ever ran has one, so a deleted
        // checkpoint file cannot pass for a young ledger.
        self.checkpoint();
        let mut batch: Vec<Pending> = Vec::with_capacity(256);
        // How long to sleep without a ring: until a time-based checkpoint is due, and never
        // so long that the last handle going away (nobody rings then) goes unnoticed.
        let idle = self
            .config
            .checkpoint_interval
            .min(Duration::from_millis(100));
        loop {
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write_batch(&mut batch);
                continue;
            }
            if rx.is_closed() && rx.is_empty() {
                break;
            }
            if self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                self.checkpoint();
            }
            // A ring that came before this wait is kept by `Notify`, so none is lost.
            let _ = tokio::time::timeout(idle, wake.notified()).await;
        }
        if self.since_checkpoint > 0 {
            self.checkpoint();
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        if self.size >= self.config.max_file_bytes {
            self.rotate();
        }
        let mut buf = String::with_capacity(batch.len() * 512);
        let (mut seq, mut hash) = (self.tail.seq, self.tail.hash.clone());
        let mut sealed = Vec::with_capacity(batch.len());
        for pending in batch.iter_mut() {
            let record = Record {
                seq: seq + 1,
                instance: self.config.instance.clone(),
                entry: std::mem::take(&mut pending.entry),
                prev_hash: hash.clone(),
            };
            match seal(&record) {
                Ok((h, line)) => {
                    seq += 1;
                    hash = h;
                    buf.push_str(&line);
                    buf.push('\n');
                    sealed.push(Some(seq));
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit entry cannot be encoded; refused");
                    sealed.push(None);
                }
            }
        }
        let written = self.file.write_all(buf.as_bytes()).and_then(|()| {
            if self.config.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                if self.config.stdout {
                    let mut out = std::io::stdout().lock();
                    if let Err(e) = out.write_all(buf.as_bytes()) {
                        tracing::warn!(error = %e, "audit records not printed on stdout");
                    }
                }
                let count = seq - self.tail.seq;
                self.size += buf.len() as u64;
                self.tail.seq = seq;
                self.tail.hash = hash;
                self.since_checkpoint += count;
                self.stats.written.fetch_add(count, Ordering::Relaxed);
                for (pending, at) in batch.drain(..).zip(sealed) {
                    if let Some(done) = pending.done {
                        let reply = at.ok_or_else(|| String::from("entry cannot be encoded"));
                        // The requester may have given up; nothing to do then.
                        drop(done.send(reply));
                    }
                }
                if self.since_checkpoint >= self.config.checkpoint_every
                    || (self.since_checkpoint > 0
                        && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
                {
                    self.checkpoint();
                }
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %self.path.display(), error = %e, "audit write failed; the batch is refused");
                // What may have reached the file is cut off again, so the chain on disk
                // stays the one in memory.
                if let Err(e) = self.file.set_len(self.size) {
                    tracing::error!(error = %e, "cannot cut a partial audit write");
                }
                for pending in batch.drain(..) {
                    if let Some(done) = pending.done {
                        drop(done.send(Err(e.to_string())));
                    }
                }
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.write_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn rotate(&mut self) {
        let path = self.config.dir.join(format!(
            "{}-{:012}.jsonl",
            self.config.prefix,
            self.tail.seq + 1
        ));
        match open_append(&path) {
            Ok(file) => {
                if let Err(e) = self.file.sync_all() {
                    tracing::warn!(error = %e, "cannot sync the audit file being closed");
                }
                self.file = file;
                self.path = path;
                self.size = 0;
                tracing::info!(file = %self.path.display(), "audit ledger rotated");
            }
            Err(e) => tracing::error!(error = %e, "audit rotation failed; the current file grows"),
        }
    }

    fn checkpoint(&mut self) {
        let (Some(key), Some(file)) = (&self.config.checkpoint_key, &mut self.checkpoints) else {
            self.since_checkpoint = 0;
            return;
        };
        let cp = Checkpoint::sign(key, self.tail.seq, &self.tail.hash, &now_rfc3339());
        let line = match serde_json::to_string(&cp) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "checkpoint cannot be encoded");
                return;
            }
        };
        match writeln!(file, "{line}").and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "checkpoint not written"),
        }
    }
}
