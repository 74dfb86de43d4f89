//! Decision-core benchmarks.
//!
//! `cargo bench -p portcullis-policy-store --bench decide`
//!
//! - `decide/default`: the shipped policies and roles, a typical principal with five
//!   assignments, reading a document two levels below a space grant; evaluated every time.
//! - `decide/heavy`: the same request with 10,000 extra policies spread over 100 extra
//!   actions, 1,000 per-principal template links and 1,000,000 assignments in the snapshot.
//! - `decide_cached/*`: the same requests repeated, answered from the decision cache.
//! - `snapshot/build_1m`: building the heavy snapshot from an in-memory state (compile,
//!   index, 1,000,000 assignments); its RSS growth is printed once.

mod fixtures;

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use fixtures::{AliceReadsD1, default_state, fail, heavy_state};
use portcullis_engine::decision::{DecisionRequest, decide, decide_uncached};
use portcullis_engine::snapshot::Snapshot;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn bench_decide(c: &mut Criterion) {
    let question = AliceReadsD1::new();
    let request = question.request();

    let default = Snapshot::build(default_state(), 0).unwrap_or_else(|e| fail(&e.to_string()));
    let check = decide(&default, &request);
    if !check.allowed || check.determining_policies != ["role:member"] {
        fail(&format!(
            "default decision is not the expected allow: {check:?}"
        ));
    }
    bench_both(c, "default", &default, &request);

    let before = rss_kib();
    let started = Instant::now();
    let heavy = Snapshot::build(heavy_state(), 0).unwrap_or_else(|e| fail(&e.to_string()));
    println!(
        "snapshot/build_1m (state generation + compile + index): {:.2?}, RSS +{} MiB, {:?}",
        started.elapsed(),
        rss_kib().saturating_sub(before) / 1024,
        heavy.counts()
    );
    let check = decide(&heavy, &request);
    if !check.allowed || check.determining_policies != ["role:member"] {
        fail(&format!(
            "heavy decision is not the expected allow: {check:?}"
        ));
    }
    bench_both(c, "heavy", &heavy, &request);
}

/// `decide/<name>`: the full evaluation every time; `decide_cached/<name>`: the same request
/// answered from the snapshot's decision cache (everything up to the roles in force, a hash
/// and a comparison).
fn bench_both(c: &mut Criterion, name: &str, snapshot: &Snapshot, request: &DecisionRequest<'_>) {
    c.bench_function(&format!("decide/{name}"), |b| {
        b.iter(|| decide_uncached(black_box(snapshot), black_box(request)))
    });
    if !decide(snapshot, request).cached && !decide(snapshot, request).cached {
        fail("the repeated decision was not answered from the cache");
    }
    c.bench_function(&format!("decide_cached/{name}"), |b| {
        b.iter(|| decide(black_box(snapshot), black_box(request)))
    });
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.bench_function("build_1m", |b| {
        b.iter_batched(
            heavy_state,
            |state| Snapshot::build(state, 0),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_build);
criterion_main!(benches);
