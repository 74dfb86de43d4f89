//! The live event stream consoles follow (`GET /v1/events/stream`). The store numbers an
//! entry for every event taken (duplicates excepted) and every dead letter, in the
//! transaction that made it ([`portcullis_model::events::StreamEntry`]); one follower per
//! control plane ([`EventStream::follow`]) reads them once as they are committed and keeps
//! the newest in memory, so every console is served from here: the store is read once per
//! entry whatever the number of consoles, and only a console further behind than what is
//! kept reads it for itself.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_model::events::StreamEntry;
use portcullis_store::Store;
use tokio::sync::{Notify, watch};

/// How many entries are kept in memory for consoles a little behind.
const KEPT_IN_MEMORY: usize = 1024;

/// The head before the follower has read the store.
const NOT_READ: i64 = -1;

/// How many entries one store read brings.
const READ_BATCH: i64 = 500;

/// How often the follower reads the store when nothing woke it: a replica sharing the
/// database may have taken an event that made no revision (acknowledged, stale, dead
/// letter), which no commit announces here.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// The newest stream entries and the number of the newest (-1 until the follower has read
/// the store once); written by one follower, read by every console.
#[derive(Debug)]
pub struct EventStream {
    kept: RwLock<VecDeque<Arc<StreamEntry>>>,
    head: watch::Sender<i64>,
    wake: Notify,
}

impl Default for EventStream {
    fn default() -> Self {
        Self {
            kept: RwLock::new(VecDeque::with_capacity(KEPT_IN_MEMORY)),
            head: watch::Sender::new(NOT_READ),
            wake: Notify::new(),
        }
    }
}

impl EventStream {
    /// The number of the newest entry read, as it moves (-1 until the follower has read the
    /// store once).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// The kept entries after number `after`, oldest first (empty when there is none yet);
    /// `None` when the entry right after it is no longer kept here, or not read yet while
    /// newer ones are (the caller reads the store).
    pub fn after(&self, after: i64) -> Option<Vec<Arc<StreamEntry>>> {
        let kept = self
            .kept
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let head = *self.head.borrow();
        if head == NOT_READ {
            return None;
        }
        if after >= head {
            return Some(Vec::new());
        }
        let oldest = kept.front()?.seq;
        if oldest > after + 1 {
            return None;
        }
        Some(
            kept.iter()
                .filter(|e| e.seq > after)
                .map(Arc::clone)
                .collect(),
        )
    }

    /// Tells the follower an entry was just committed by this process.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn push(&self, entries: Vec<StreamEntry>) {
        let Some(newest) = entries.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut kept = self
                .kept
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for entry in entries {
                // Numbers have no gaps: one that does not follow means the store dropped
                // entries the follower had not read (it was away past the store's bound).
                if kept.back().is_some_and(|last| last.seq + 1 != entry.seq) {
                    kept.clear();
                }
                if kept.len() == KEPT_IN_MEMORY {
                    kept.pop_front();
                }
                kept.push_back(Arc::new(entry));
            }
        }
        self.head.send_replace(newest);
    }

    /// Reads `store`'s entries into this stream as they are committed: woken by this
    /// process's takes ([`EventStream::wake`]) and commits (a replica's too, on
    /// PostgreSQL), and every second. Runs until the process stops it.
    pub async fn follow<S: Store>(self: Arc<Self>, store: S) {
        let mut commits = store.commits();
        let mut head = loop {
            match store.event_stream_head().await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: cannot read the store; retrying");
                    tokio::time::sleep(FOLLOW_INTERVAL).await;
                }
            }
        };
        self.head.send_replace(head);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                woken = commits.changed() => {
                    if woken.is_err() {
                        tokio::time::sleep(FOLLOW_INTERVAL).await;
                    }
                }
            }
            loop {
                match store.event_stream(head, READ_BATCH).await {
                    Ok(entries) => {
                        let full = entries.len() as i64 == READ_BATCH;
                        if let Some(last) = entries.last() {
                            head = last.seq;
                        }
                        self.push(entries);
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: cannot read the store");
                        break;
                    }
                }
            }
        }
    }
}
