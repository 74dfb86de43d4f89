//! Adds the heavy scenario's population to an existing store: `USERS` users and
//! `ASSIGNMENTS` assignments (`member` or `guest` on one of 50,000 spaces), in one import.
//! `bench/run` runs it against the SQLite store of a `portcullis serve` it stopped, whose
//! policies directory carries the 10,000 extra policies.
//!
//! ```text
//! heavy-seed <store.db> [users] [assignments]     # default 100000 1000000
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_store::{SqlStore, Store, StoreConfig};

#[path = "../population.rs"]
#[expect(dead_code, reason = "own_space is the fleet benchmark's")]
mod population;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: heavy-seed <store.db> [users] [assignments]");
        return ExitCode::from(2);
    };
    let users: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let assignments: usize = args
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let import = match population::import(users, assignments, "heavy-seed") {
        Ok(import) => import,
        Err(e) => {
            eprintln!("heavy-seed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("heavy-seed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let result = runtime.block_on(async {
        let store = SqlStore::connect(&StoreConfig::Sqlite { path: path.clone() }).await?;
        store.import(&import).await
    });
    match result {
        Ok(revision) => {
            eprintln!(
                "heavy-seed: {users} users and {assignments} assignments into `{}` at revision {revision} in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heavy-seed: `{}`: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
