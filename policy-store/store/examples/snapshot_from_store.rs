//! Times the heavy state of the `decide` benchmark (10,000 extra policies, 1,000 template
//! links, 100,000 users, 1,000,000 assignments) through a real store: the import, reading
//! the whole state back (`load_state`, what a process does at start), and building the
//! snapshot from it; prints the RSS growth of each step.
//!
//! ```sh
//! cargo run --release -p portcullis-policy-store --example snapshot_from_store -- sqlite
//! cargo run --release -p portcullis-policy-store --example snapshot_from_store -- postgres
//! ```
//!
//! PostgreSQL: a scratch database on the server of `PORTCULLIS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped at the end.

#[path = "../../engine/benches/fixtures/mod.rs"]
#[expect(dead_code, reason = "only the heavy state is used")]
mod fixtures;

use std::time::Instant;

use fixtures::{fail, heavy_state};
use portcullis_engine::snapshot::Snapshot;
use portcullis_store::scratch::ScratchPostgres;
use portcullis_store::{Import, SqlStore, Store, StoreConfig};

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// The store to fill; the scratch PostgreSQL database lives as long as the guard.
async fn store_config(backend: &str) -> (StoreConfig, Option<ScratchPostgres>) {
    match backend {
        "sqlite" => {
            let path =
                std::env::temp_dir().join(format!("portcullis-heavy-{}.db", std::process::id()));
            for suffix in ["", "-wal", "-shm"] {
                let _removed = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            (StoreConfig::Sqlite { path }, None)
        }
        "postgres" => {
            let db = ScratchPostgres::create("bench")
                .await
                .unwrap_or_else(|e| fail(&e));
            (
                StoreConfig::Postgres {
                    url: db.url.clone(),
                },
                Some(db),
            )
        }
        other => fail(&format!("backend `{other}`: sqlite or postgres")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let backend = std::env::args()
        .nth(1)
        .unwrap_or_else(|| String::from("sqlite"));
    let (config, _database) = store_config(&backend).await;
    let store = SqlStore::connect(&config)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));

    let state = heavy_state();
    let Some(version) = state.policy_set else {
        fail("the heavy state has a policy set")
    };
    let import = Import {
        principals: state.principals,
        roles: state.roles,
        assignments: state.assignments,
        entities: state.entities,
        template_links: state.template_links,
        policy_set: Some((version.files, version.schema)),
        ..Import::default()
    };
    let started = Instant::now();
    store
        .import(&import)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    println!(
        "{backend}: import of 1,000,005 assignments: {:.2?}",
        started.elapsed()
    );
    drop(import);

    let before = rss_mib();
    let started = Instant::now();
    let loaded = store
        .load_state()
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    let load_time = started.elapsed();
    let after_load = rss_mib();
    println!(
        "{backend}: load_state: {load_time:.2?}, RSS +{} MiB",
        after_load.saturating_sub(before)
    );
    let started = Instant::now();
    let snapshot = Snapshot::build(loaded, 0).unwrap_or_else(|e| fail(&e.to_string()));
    println!(
        "{backend}: Snapshot::build: {:.2?}, RSS now +{} MiB over the start of load_state; {:?}",
        started.elapsed(),
        rss_mib().saturating_sub(before),
        snapshot.counts()
    );
    println!(
        "{backend}: start-up total (load + build): {:.2?}",
        load_time + started.elapsed()
    );
}
