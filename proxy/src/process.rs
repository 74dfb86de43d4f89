//! The process every mode runs in: Pingora's server on the main thread (the listeners and
//! the signals), and beside it one background runtime whose every task — the publisher or
//! the follower, key refresh, reloads, audit sinks, the admin API — runs under one shutdown
//! signal.
//!
//! Stopping goes in one order: Pingora drains and closes its listeners (see
//! [`crate::server`]); then the signal is given: plain tasks end at their next await, the
//! admin API stops accepting and finishes the calls in flight (its watch streams end), and
//! the process waits up to the grace period for them before the runtime goes.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `portcullis serve`: data plane and control plane in one process.
    Serve,
    /// `portcullis control`: the control plane alone.
    Control,
    /// `portcullis proxy`: the data plane alone, following a control plane.
    Proxy,
}

impl Mode {
    /// Whether the data-plane listeners run.
    pub fn serves_data_plane(self) -> bool {
        matches!(self, Self::Serve | Self::Proxy)
    }
}

/// The background runtime and its tasks.
#[derive(Debug)]
pub struct Background {
    runtime: tokio::runtime::Runtime,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// One worker thread, `portcullis-control`: the background does little per second.
    pub fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-control")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the background runtime: {e}"))?;
        Ok(Self {
            runtime,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Runs `future` to completion on the background runtime (start-up work).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The shutdown signal, for a task that stops by itself (see [`Background::spawn_until`]).
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` until it ends or the shutdown signal is given, whichever comes first.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn_on(
            async move {
                tokio::select! {
                    () = task => {}
                    () = stop.cancelled() => {}
                }
            },
            self.runtime.handle(),
        );
    }

    /// Runs `task`, which watches the shutdown signal itself and finishes its work after
    /// it (the admin API draining its calls); waited for up to the grace period.
    pub fn spawn_until(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn_on(task, self.runtime.handle());
    }

    /// Gives the shutdown signal and waits up to `grace` for every task to end.
    pub fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let tasks = self.tasks.clone();
        let ended = self
            .runtime
            .block_on(async move { tokio::time::timeout(grace, tasks.wait()).await });
        if ended.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                grace_s = grace.as_secs(),
                "background tasks still running after the grace period; stopping them"
            );
        }
        self.runtime.shutdown_timeout(Duration::from_millis(100));
    }
}

/// Once every handle to the ledger is gone, its keeper thread writes what is left, signs a
/// last checkpoint and ends; waits up to 3 s for that.
pub fn join_audit_keeper(keeper: Option<std::thread::JoinHandle<()>>) {
    let Some(keeper) = keeper else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !keeper.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !keeper.is_finished() {
        tracing::warn!("the audit keeper did not stop in time; its last checkpoint may be missing");
    } else if keeper.join().is_err() {
        tracing::error!("the audit keeper failed while stopping");
    }
}
