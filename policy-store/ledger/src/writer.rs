//! The ledger writer: one per process owns the files and the chain. Callers hand it entries
//! through a bounded queue; it numbers them, chains them, writes them in batches and only
//! then acknowledges them, so a record is on its way to disk before the request it
//! describes is answered.
//!
//! When the queue is full the default is back-pressure: [`Ledger::append`] waits up to the
//! caller's deadline and then fails (the data plane answers 503). Dropping instead must be
//! chosen ([`Ledger::append_nowait`]) and is counted.
//!
//! Who writes: a batch is written by a *drain task* on the appender's own runtime, started
//! by the first appender that finds no drain under way. The task yields to the runtime, and
//! again as long as entries keep arriving (at most [`MAX_YIELDS`] times), so the requests
//! ready on that runtime queue theirs first; then it takes the whole queue in one batch: one
//! `write(2)` of page-cache bytes per batch (an append is a journalled size change, ~10 µs
//! of kernel time here: at saturation this is most of what the ledger costs), and no thread
//! switch to hand entries over or to acknowledge them. (A writer thread woken per batch cost
//! the data plane a thread switch each way: +44% CPU per request; see BENCHMARKS.md.) With
//! `fsync` the drain runs on the runtime's blocking pool instead, since it waits for the
//! disk.
//!
//! What may stall (signed checkpoints, which `fsync` their file; syncing a file closed by
//! rotation) is left to the ledger's *keeper thread*, which also writes time-based
//! checkpoints, takes entries no drain task took (an appender outside a runtime, a runtime
//! shut down under a drain), and writes the last checkpoint once every handle is dropped.
//!
//! Written with `write(2)`: a record survives the process being killed; with `fsync` it also
//! survives the machine going down, at a cost per batch. On start the writer continues the
//! chain from the last complete record; a line torn by a crash (never acknowledged) is cut.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, Checkpoint};
use super::{EncodedEntry, GENESIS, LedgerError, Record, seal_into, unseal};

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

/// A change to the authorization model as the ledger records it (`kind: admin_change`):
/// who made it, what, on which object, and either what it became or why it was not made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeRecord {
    /// Who: an admin token's subject, `jwt:<sub>`, or `event:<source>/<id>`.
    pub actor: String,
    /// What: `principal.put`, `event.USER_CREATED`, ...
    pub action: String,
    /// The changed object, when there is one.
    pub resource: Option<String>,
    /// Why it was not made (`not made: ...`); `None` for the change itself.
    pub reason: Option<String>,
    /// The object before.
    pub before: Option<serde_json::Value>,
    /// The object after (or what is about to change).
    pub after: Option<serde_json::Value>,
}

/// Another service's audit event as the ledger records it (`kind: external`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalRecord {
    /// Who acted, as the event names them (`user:<id>`).
    pub actor: Option<String>,
    /// What they did (`issuer.created`).
    pub action: String,
    /// On what (`issuer:<id>`).
    pub resource: Option<String>,
    /// The event as published.
    pub event: serde_json::Value,
}

/// Why a change could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// It has no canonical encoding.
    #[error(transparent)]
    Encode(#[from] super::EncodeError),
    /// The ledger did not take it.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// How long a change waits for room in the ledger's queue.
const CHANGE_WAIT: Duration = Duration::from_secs(1);

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
    entry: EncodedEntry,
    done: Option<oneshot::Sender<Result<u64, String>>>,
}

/// Counters of a ledger.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Records written.
    pub written: AtomicU64,
    /// Entries of [`Ledger::append_nowait`] not written: the queue was full, or the write
    /// failed (a full disk).
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
    shared: Arc<Shared>,
    dir: PathBuf,
    prefix: String,
}

/// What the drain tasks and the keeper thread share.
#[derive(Debug)]
struct Shared {
    /// The ledger file, the chain and the queue's receiving end. Held only for synchronous
    /// work, never across an await, and never while a checkpoint is synced to disk.
    writer: Mutex<Writer>,
    /// A drain is claimed (spawned or running); appenders then only queue.
    draining: AtomicBool,
    /// Appends so far: a drain waiting for its batch to fill watches it grow.
    arrivals: AtomicU64,
    /// Drains wait for the disk (`fsync`): run them on the blocking pool.
    blocking: bool,
    stats: Arc<LedgerStats>,
    /// The keeper thread, set once it runs.
    keeper: std::sync::OnceLock<std::thread::Thread>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Records a change, waiting up to a second for room: a change that cannot be recorded
    /// must not be made (the caller refuses it).
    pub async fn record_change(&self, change: ChangeRecord) -> Result<u64, RecordError> {
        let entry = super::Entry {
            ts: super::timestamp_now(),
            kind: super::RecordKind::AdminChange,
            actor: Some(change.actor),
            action: Some(change.action),
            resource: change.resource,
            reason: change.reason,
            before: change.before,
            after: change.after,
            ..super::Entry::default()
        };
        Ok(self.append(entry.encode()?, CHANGE_WAIT).await?)
    }

    /// Records another service's audit event, waiting up to a second for room; its place in
    /// the chain once written.
    pub async fn record_external(&self, external: ExternalRecord) -> Result<u64, RecordError> {
        let entry = super::Entry {
            ts: super::timestamp_now(),
            kind: super::RecordKind::External,
            actor: external.actor,
            action: Some(external.action),
            resource: external.resource,
            after: Some(external.event),
            ..super::Entry::default()
        };
        Ok(self.append(entry.encode()?, CHANGE_WAIT).await?)
    }

    /// Opens (or continues) the ledger in `config.dir`, signs a checkpoint (one at every
    /// start: a ledger that ever ran has one, so a deleted checkpoint file cannot pass for a
    /// young ledger) and starts the keeper thread, which ends, after a last checkpoint, once
    /// every `Ledger` handle is dropped.
    pub fn open(
        config: LedgerConfig,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), LedgerError> {
        std::fs::create_dir_all(&config.dir).map_err(LedgerError::io(&config.dir, "create"))?;
        let tail = recover(&config.dir, &config.prefix)?;
        let mut checkpoints = match &config.checkpoint_key {
            Some(_) => {
                let path = config.dir.join(checkpoint::FILE);
                Some(CheckpointFile {
                    file: open_append(&path)?,
                    path,
                    unwritten: Vec::new(),
                })
            }
            None => None,
        };
        let (dir, prefix) = (config.dir.clone(), config.prefix.clone());
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(LedgerStats::default());
        let blocking = config.fsync;
        let mut writer = Writer::new(config, tail, rx, Arc::clone(&stats))?;
        if let Some(checkpoints) = &mut checkpoints {
            writer.sign_checkpoint();
            checkpoints.unwritten.append(&mut writer.signed);
            checkpoints.write()?;
        }
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            draining: AtomicBool::new(false),
            arrivals: AtomicU64::new(0),
            blocking,
            stats,
            keeper: std::sync::OnceLock::new(),
        });
        let keeper_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(String::from("portcullis-audit"))
            .spawn(move || keeper_shared.keep(checkpoints))
            .map_err(LedgerError::Thread)?;
        // Only this thread sets it, once.
        let _ = shared.keeper.set(thread.thread().clone());
        Ok((
            Arc::new(Self {
                tx,
                shared,
                dir,
                prefix,
            }),
            thread,
        ))
    }

    /// Appends and waits until the record is written. Waits at most `deadline` for room in
    /// the queue; past it, [`AppendError::Full`].
    pub async fn append(
        &self,
        entry: EncodedEntry,
        deadline: Duration,
    ) -> Result<u64, AppendError> {
        let (done, written) = oneshot::channel();
        let pending = Pending {
            entry,
            done: Some(done),
        };
        match self.tx.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(AppendError::Closed),
            Err(mpsc::error::TrySendError::Full(pending)) => {
                self.drain_soon();
                match tokio::time::timeout(deadline, self.tx.send(pending)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(AppendError::Closed),
                    Err(_) => {
                        self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        return Err(AppendError::Full);
                    }
                }
            }
        }
        self.drain_soon();
        match written.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AppendError::Write(e)),
            Err(_) => Err(AppendError::Closed),
        }
    }

    /// Appends without waiting; a full queue drops the entry (counted). Returns whether it
    /// was queued.
    pub fn append_nowait(&self, entry: EncodedEntry) -> bool {
        let queued = self.tx.try_send(Pending { entry, done: None }).is_ok();
        self.drain_soon();
        if !queued {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Makes sure a drain will take what is queued: claims the drain and spawns it on the
    /// caller's runtime, unless one is claimed already (that one takes this entry too: it
    /// looks at the queue again after giving up its claim). Outside a runtime the keeper
    /// thread drains.
    fn drain_soon(&self) {
        self.shared.arrivals.fetch_add(1, Ordering::Relaxed);
        if self.shared.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let claim = DrainClaim(Some(Arc::clone(&self.shared)));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.shared.blocking => {
                drop(runtime.spawn_blocking(move || claim.drain()));
            }
            Ok(runtime) => {
                let shared = Arc::clone(&self.shared);
                drop(runtime.spawn(async move {
                    // Let the other requests ready on this runtime queue theirs first, and
                    // keep letting them while more come: a write(2) per batch is the
                    // ledger's dearest part (an append grows the file's size: a journalled
                    // inode update), and a request waits no longer than the others ready
                    // beside it take to reach this point.
                    let arrivals = || shared.arrivals.load(Ordering::Relaxed);
                    let mut seen = arrivals();
                    for _ in 0..MAX_YIELDS {
                        tokio::task::yield_now().await;
                        let now = arrivals();
                        if now == seen {
                            break;
                        }
                        seen = now;
                    }
                    claim.drain();
                }));
            }
            Err(_) => {
                drop(claim);
                self.shared.wake_keeper();
            }
        }
    }

    /// Entries waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The counters.
    pub fn stats(&self) -> &LedgerStats {
        &self.shared.stats
    }

    /// Reads this ledger's records (see [`super::query`]); blocking file I/O.
    pub fn query(
        &self,
        query: &super::query::AuditQuery,
    ) -> Result<super::query::AuditPage, LedgerError> {
        super::query::query(&self.dir, &self.prefix, query)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // If this is the last handle, the keeper writes what is left and a last checkpoint.
        self.shared.wake_keeper();
    }
}

/// How many times a drain lets the runtime run other tasks while the batch grows.
const MAX_YIELDS: usize = 8;

/// The right to drain, held by one spawned drain at a time. Given up when the drain is done
/// or, if it never runs (its runtime shut down first), when it is dropped.
struct DrainClaim(Option<Arc<Shared>>);

impl DrainClaim {
    fn drain(mut self) {
        if let Some(shared) = self.0.take() {
            shared.drain();
        }
    }
}

impl Drop for DrainClaim {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.draining.store(false, Ordering::Release);
            shared.wake_keeper();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| {
            // A panic while the lock was held (in the middle of a batch: its appenders were
            // answered `Closed`) may have left records in the file that the chain in memory
            // does not have: continue from what the file holds, so the chain does not fork.
            let mut writer = poisoned.into_inner();
            writer.continue_from_file();
            self.writer.clear_poison();
            writer
        })
    }

    fn wake_keeper(&self) {
        if let Some(keeper) = self.keeper.get() {
            keeper.unpark();
        }
    }

    /// Writes everything queued, gives up the claim, and takes the queue again if an entry
    /// came in meanwhile (its appender saw the claim and spawned nothing).
    fn drain(&self) {
        loop {
            let keeper_has_work = {
                let mut writer = self.lock();
                writer.write_queued();
                !writer.signed.is_empty() || !writer.rotated.is_empty()
            };
            if keeper_has_work {
                self.wake_keeper();
            }
            // A read-modify-write: it sees the claim of an appender that queued just now.
            self.draining.swap(false, Ordering::AcqRel);
            if self.lock().rx.is_empty() || self.draining.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// The keeper thread: writes signed checkpoints and syncs files closed by rotation, both
    /// outside the writer's lock; signs time-based checkpoints; writes what no drain took;
    /// and once every handle is gone, writes the rest and a last checkpoint.
    fn keep(&self, mut checkpoints: Option<CheckpointFile>) {
        let idle = {
            let writer = self.lock();
            writer
                .config
                .checkpoint_interval
                .min(Duration::from_millis(100))
        };
        loop {
            std::thread::park_timeout(idle);
            let (rotated, finished) = {
                let mut writer = self.lock();
                writer.write_queued();
                let finished = writer.rx.is_closed() && writer.rx.is_empty();
                if writer.since_checkpoint > 0
                    && (finished
                        || writer.last_checkpoint.elapsed() >= writer.config.checkpoint_interval)
                {
                    writer.sign_checkpoint();
                }
                if let Some(checkpoints) = &mut checkpoints {
                    checkpoints.unwritten.append(&mut writer.signed);
                }
                (std::mem::take(&mut writer.rotated), finished)
            };
            for file in rotated {
                if let Err(e) = file.sync_all() {
                    tracing::warn!(error = %e, "cannot sync an audit file closed by rotation");
                }
            }
            if let Some(Err(e)) = checkpoints.as_mut().map(CheckpointFile::write) {
                tracing::error!(error = %e, "checkpoints not written; trying again");
            }
            if finished {
                return;
            }
        }
    }
}

/// The checkpoint file and what is signed but not yet in it; owned by the keeper thread.
struct CheckpointFile {
    file: File,
    path: PathBuf,
    unwritten: Vec<Checkpoint>,
}

impl CheckpointFile {
    /// Appends and syncs the signed checkpoints; on failure they stay for the next try.
    fn write(&mut self) -> Result<(), LedgerError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let mut lines = String::new();
        for cp in &self.unwritten {
            // A checkpoint is strings and numbers: it always serialises.
            lines.push_str(&serde_json::to_string(cp).unwrap_or_default());
            lines.push('\n');
        }
        self.file
            .write_all(lines.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(LedgerError::io(&self.path, "write"))?;
        self.unwritten.clear();
        Ok(())
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
fn recover(dir: &Path, prefix: &str) -> Result<Tail, LedgerError> {
    let files = super::tail::ledger_files(dir, prefix)?;
    for file in files.iter().rev() {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .map_err(LedgerError::io(file, "open"))?;
        let mut last: Option<String> = None;
        let mut complete_len: u64 = 0;
        let mut reader = BufReader::new(&mut f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(LedgerError::io(file, "read"))?;
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
                .map_err(LedgerError::io(file, "cut the torn last line of"))?;
            tracing::warn!(file = %file.display(), bytes = size - complete_len, "cut a torn last audit line (it was never acknowledged)");
        }
        if let Some(line) = last {
            let (canonical, hash) = unseal(&line).ok_or_else(|| LedgerError::Damaged {
                path: file.clone(),
                what: String::from("the last line is not a sealed record"),
            })?;
            let record: Record =
                serde_json::from_str(&canonical).map_err(|e| LedgerError::Damaged {
                    path: file.clone(),
                    what: format!("the last record does not parse: {e}"),
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

/// The chain and the ledger file, behind [`Shared::writer`].
struct Writer {
    config: LedgerConfig,
    tail: Tail,
    file: File,
    path: PathBuf,
    size: u64,
    rx: mpsc::Receiver<Pending>,
    /// Reused for every batch: its entries and its lines.
    batch: Vec<Pending>,
    buf: Vec<u8>,
    /// Files closed by rotation, for the keeper to sync.
    rotated: Vec<File>,
    /// Checkpoints signed, for the keeper to write.
    signed: Vec<Checkpoint>,
    /// The digest of the last checkpoint signed, which the next one links to.
    checkpoint_prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    stats: Arc<LedgerStats>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("seq", &self.tail.seq)
            .finish_non_exhaustive()
    }
}

fn open_append(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(LedgerError::io(path, "open for appending"))
}

impl Writer {
    fn new(
        config: LedgerConfig,
        tail: Tail,
        rx: mpsc::Receiver<Pending>,
        stats: Arc<LedgerStats>,
    ) -> Result<Self, LedgerError> {
        let checkpoint_prev = checkpoint::last_digest(&config.dir.join(checkpoint::FILE))?;
        let path = match &tail.file {
            Some(p) => p.clone(),
            None => config
                .dir
                .join(format!("{}-{:012}.jsonl", config.prefix, tail.seq + 1)),
        };
        let mut file = open_append(&path)?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(LedgerError::io(&path, "seek in"))?;
        Ok(Self {
            config,
            tail,
            file,
            path,
            size,
            rx,
            batch: Vec::with_capacity(256),
            buf: Vec::with_capacity(64 * 1024),
            rotated: Vec::new(),
            signed: Vec::new(),
            checkpoint_prev,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            stats,
        })
    }

    /// Writes everything in the queue, in batches of at most 1,024.
    fn write_queued(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        loop {
            while batch.len() < 1024 {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.write_batch(&mut batch);
        }
        self.batch = batch;
    }

    /// Signs the head (when there is a key) for the keeper to write; the count starts
    /// again.
    fn sign_checkpoint(&mut self) {
        if let Some(key) = &self.config.checkpoint_key {
            let checkpoint = Checkpoint::sign(
                key,
                self.tail.seq,
                &self.tail.hash,
                &super::timestamp_now(),
                &self.checkpoint_prev,
            );
            self.checkpoint_prev = checkpoint.digest();
            self.signed.push(checkpoint);
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
    }

    /// Takes the chain's head and the file's size from the files again (after a panic).
    fn continue_from_file(&mut self) {
        match recover(&self.config.dir, &self.config.prefix) {
            Ok(tail) => {
                if tail.seq != self.tail.seq {
                    tracing::error!(
                        in_memory = self.tail.seq,
                        in_file = tail.seq,
                        "audit writer interrupted mid-batch; continuing from the file"
                    );
                }
                self.tail.seq = tail.seq;
                self.tail.hash = tail.hash;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit writer interrupted; cannot read the ledger back")
            }
        }
        if let Ok(metadata) = self.file.metadata() {
            self.size = metadata.len();
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        if self.size >= self.config.max_file_bytes {
            self.rotate();
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut seq = self.tail.seq;
        let mut hash = self.tail.hash.clone();
        let mut sealed = Vec::with_capacity(batch.len());
        for pending in batch.iter() {
            match seal_into(
                &mut buf,
                seq + 1,
                &self.config.instance,
                &pending.entry,
                &hash,
            ) {
                Ok(h) => {
                    seq += 1;
                    hash = h;
                    sealed.push(Some(seq));
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit entry cannot be encoded; refused");
                    sealed.push(None);
                }
            }
        }
        let written = self.file.write_all(&buf).and_then(|()| {
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
                    if let Err(e) = out.write_all(&buf) {
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
                    match pending.done {
                        Some(done) => {
                            let reply = at.ok_or_else(|| String::from("entry cannot be encoded"));
                            // The requester may have given up; nothing to do then.
                            drop(done.send(reply));
                        }
                        // Nobody waits for it: an entry not written is a dropped record.
                        None if at.is_none() => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {}
                    }
                }
                if self.since_checkpoint >= self.config.checkpoint_every {
                    self.sign_checkpoint();
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
                    match pending.done {
                        Some(done) => drop(done.send(Err(e.to_string()))),
                        // Nobody waits for it (`on_full: drop`): the record is lost, and
                        // counted as dropped like one the full queue refused.
                        None => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        self.buf = buf;
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
                let closed = std::mem::replace(&mut self.file, file);
                // Synced by the keeper, off the request path.
                self.rotated.push(closed);
                self.path = path;
                self.size = 0;
                tracing::info!(file = %self.path.display(), "audit ledger rotated");
            }
            Err(e) => tracing::error!(error = %e, "audit rotation failed; the current file grows"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{VerifyOptions, verify};

    fn entry(i: u64) -> EncodedEntry {
        crate::Entry {
            ts: String::from("2026-01-06T10:00:00.000Z"),
            decision_id: Some(format!("d-{i}")),
            ..crate::Entry::default()
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn a_panic_in_the_middle_of_a_batch_does_not_fork_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let (ledger, keeper) = Ledger::open(LedgerConfig {
            dir: dir.path().to_path_buf(),
            prefix: String::from("audit"),
            max_file_bytes: 1 << 20,
            instance: String::from("test-1"),
            queue_capacity: 16,
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_key: Some(key.clone()),
            fsync: false,
            stdout: false,
        })
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let append = |i| rt.block_on(ledger.append(entry(i), Duration::from_secs(5)));
        for i in 1..=3 {
            assert_eq!(append(i).unwrap(), i);
        }
        // A batch reaches the file, then the writer panics before its chain moves on.
        let shared = Arc::clone(&ledger.shared);
        let interrupted = std::thread::spawn(move || {
            let mut writer = shared.lock();
            let mut line = Vec::new();
            let (seq, hash) = (writer.tail.seq + 1, writer.tail.hash.clone());
            seal_into(&mut line, seq, "test-1", &entry(4), &hash).unwrap();
            writer.file.write_all(&line).unwrap();
            panic!("interrupted mid-batch");
        })
        .join();
        assert!(interrupted.is_err());
        // The next record follows the one in the file, not the one in memory.
        assert_eq!(append(5).unwrap(), 5);
        drop(ledger);
        keeper.join().unwrap();
        let summary = verify(
            &[dir.path().to_path_buf()],
            &VerifyOptions {
                public_key: Some(key.verifying_key()),
                ..VerifyOptions::default()
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            (summary.records, summary.range, summary.last_checkpoint),
            (5, Some((1, 5)), Some(5)),
            "{summary:?}"
        );
    }
}
