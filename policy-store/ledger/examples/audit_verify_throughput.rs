//! Writes a ledger of N realistic decision records with the real writer, then times
//! verification of the whole chain (single-threaded, checkpoints and signatures included).
//!
//! ```sh
//! cargo run --release -p portcullis-policy-store --example audit_verify_throughput -- 1000000
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use portcullis_ledger::verify::{VerifyOptions, verify};
use portcullis_ledger::writer::{Ledger, LedgerConfig};
use portcullis_ledger::{EncodedEntry, Entry, RecordKind};

#[expect(clippy::panic, reason = "an example without its inputs cannot run")]
fn fail(message: &str) -> ! {
    panic!("{message}")
}

fn entry(i: u64) -> EncodedEntry {
    Entry {
        ts: String::from("2026-01-06T10:00:00.123Z"),
        kind: RecordKind::Decision,
        decision_id: Some(format!("01a20c40-67d3-77ae-ab65-{i:012}")),
        principal: Some(String::from("User::\"alice\"")),
        action: Some(String::from("document.read")),
        resource: Some(format!("Document::\"d{}\"", i % 1000)),
        decision: Some(String::from("allow")),
        reason: None,
        policies: vec![String::from("role:guardian")],
        errors: vec![],
        claimed_roles: vec![],
        route: Some(String::from("get_document")),
        context: BTreeMap::from([
            (String::from("band"), String::from("AMBER")),
            (String::from("hour"), String::from("10")),
            (String::from("ip"), String::from("sha256:9f2c1e6d3a4b5c6d")),
            (String::from("mfa"), String::from("false")),
            (String::from("risk_score"), String::from("10")),
            (String::from("weekday"), String::from("2")),
        ]),
        latency_us: Some(12),
        trace_id: Some(String::from("4bf92f3577b34da6a3ce929d0e0e4736")),
        actor: None,
        before: None,
        after: None,
    }
    .encode()
    .unwrap_or_else(|e| fail(&e.to_string()))
}

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |n| n.parse())
        .unwrap_or_else(|e| fail(&format!("record count: {e}")));
    let dir = std::env::temp_dir().join(format!("portcullis-verify-{}", std::process::id()));
    let key = SigningKey::from_bytes(&[3; 32]);
    let (ledger, writer) = Ledger::open(LedgerConfig {
        dir: dir.clone(),
        prefix: String::from("audit"),
        max_file_bytes: 256 * 1024 * 1024,
        instance: String::from("bench"),
        queue_capacity: 65_536,
        checkpoint_every: 10_000,
        checkpoint_interval: Duration::from_secs(60),
        checkpoint_key: Some(key.clone()),
        fsync: false,
        stdout: false,
    })
    .unwrap_or_else(|e| fail(&e.to_string()));
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(&e.to_string()));
    rt.block_on(async {
        for i in 0..count {
            while !ledger.append_nowait(entry(i)) {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    });
    drop(ledger);
    if writer.join().is_err() {
        fail("the writer panicked");
    }
    let bytes: u64 = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "wrote {count} records ({} MiB) in {:.2?}",
        bytes / (1024 * 1024),
        started.elapsed()
    );
    let started = Instant::now();
    let summary = verify(
        std::slice::from_ref(&dir),
        &VerifyOptions {
            public_key: Some(key.verifying_key()),
            ..VerifyOptions::default()
        },
        &mut |_| {},
    )
    .unwrap_or_else(|b| fail(&b.to_string()));
    let elapsed = started.elapsed();
    println!(
        "verified {} records, {} checkpoints, in {elapsed:.2?}: {:.0} records/s",
        summary.records,
        summary.checkpoints,
        summary.records as f64 / elapsed.as_secs_f64()
    );
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}
