//! The audit ledger, written by the real writer into real files, then tampered with every
//! way an attacker with write access to the files could: each must fail verification at the
//! right place, and a clean ledger must pass.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test loudly")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use portcullis_ledger::checkpoint::{self, Checkpoint};
use portcullis_ledger::verify::{Break, Summary, VerifyOptions, verify};
use portcullis_ledger::writer::{Ledger, LedgerConfig};
use portcullis_ledger::{EncodedEntry, Entry, GENESIS, Record, seal, unseal};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn config(dir: &Path, max_file_bytes: u64) -> LedgerConfig {
    LedgerConfig {
        dir: dir.to_path_buf(),
        prefix: String::from("audit"),
        max_file_bytes,
        instance: String::from("test-1"),
        queue_capacity: 64,
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(60),
        checkpoint_key: Some(key()),
        fsync: false,
        stdout: false,
    }
}

fn entry(i: u64) -> EncodedEntry {
    Entry {
        ts: format!("2026-01-06T10:00:{:02}.000Z", i % 60),
        decision_id: Some(format!("d-{i}")),
        principal: Some(String::from("User::\"alice\"")),
        action: Some(String::from("document.read")),
        resource: Some(format!("Document::\"d{i}\"")),
        decision: Some(String::from(if i.is_multiple_of(3) {
            "deny"
        } else {
            "allow"
        })),
        ..Entry::default()
    }
    .encode()
    .unwrap()
}

/// Writes `count` records through the real writer and waits for it to stop.
fn write(dir: &Path, count: u64, max_file_bytes: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ledger, thread) = Ledger::open(config(dir, max_file_bytes)).unwrap();
    rt.block_on(async {
        for i in 1..=count {
            ledger
                .append(entry(i), Duration::from_secs(1))
                .await
                .unwrap();
        }
    });
    drop(ledger);
    thread.join().unwrap();
}

fn verify_dir(dir: &Path) -> Result<Summary, Break> {
    verify(
        &[dir.to_path_buf()],
        &VerifyOptions {
            public_key: Some(key().verifying_key()),
            ..VerifyOptions::default()
        },
        &mut |_| {},
    )
}

fn the_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit-")
        })
        .collect();
    files.sort();
    files.pop().unwrap()
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn save(file: &Path, lines: &[String]) {
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

/// A ledger of 25 records in a fresh directory.
fn ledger() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 25, u64::MAX);
    let file = the_file(dir.path());
    (dir, file)
}

#[test]
fn a_clean_ledger_verifies_with_its_checkpoints() {
    let (dir, _) = ledger();
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!(summary.records, 25);
    assert_eq!(summary.range, Some((1, 25)));
    // One at start (seq 0, not a record), every 10 records, and one when the writer stopped.
    assert_eq!(summary.checkpoints, 3);
    assert_eq!(summary.last_checkpoint, Some(25));
}

#[test]
fn a_changed_member_breaks_at_its_record() {
    let (dir, file) = ledger();
    let mut l = lines(&file);
    l[4] = l[4].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    save(&file, &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!((b.line, b.seq), (5, Some(5)), "{b}");
    assert!(b.what.contains("hash does not match"), "{b}");
}

#[test]
fn a_deleted_record_breaks_at_the_gap() {
    let (dir, file) = ledger();
    let mut l = lines(&file);
    l.remove(4);
    save(&file, &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!((b.line, b.seq), (5, Some(6)), "{b}");
    assert!(b.what.contains("expected seq 5 after 4"), "{b}");
}

#[test]
fn an_inserted_record_breaks() {
    let (dir, file) = ledger();
    let mut l = lines(&file);
    let copy = l[2].clone();
    l.insert(3, copy);
    save(&file, &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!((b.line, b.seq), (4, Some(3)), "{b}");
}

#[test]
fn two_swapped_records_break() {
    let (dir, file) = ledger();
    let mut l = lines(&file);
    l.swap(3, 4);
    save(&file, &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!((b.line, b.seq), (4, Some(5)), "{b}");
}

#[test]
fn a_truncated_tail_is_caught_by_the_last_checkpoint() {
    let (dir, file) = ledger();
    let mut l = lines(&file);
    l.truncate(22);
    save(&file, &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!(b.seq, Some(25), "{b}");
    assert!(b.what.contains("ends at seq 22"), "{b}");
}

/// Re-seals every record from a fresh genesis after changing one: a chain that is valid in
/// itself.
fn rebuild(file: &Path) {
    let mut prev = String::from(GENESIS);
    let rebuilt: Vec<String> = lines(file)
        .iter()
        .map(|line| {
            let (canonical, _) = unseal(line).unwrap();
            let mut record: Record = serde_json::from_str(&canonical).unwrap();
            if record.seq == 2 {
                record.entry.decision = Some(String::from("deny"));
            }
            record.prev_hash = prev.clone();
            let (hash, line) = seal(&record).unwrap();
            prev = hash;
            line
        })
        .collect();
    save(file, &rebuilt);
}

#[test]
fn a_chain_rebuilt_from_a_fresh_genesis_fails_at_the_first_checkpoint() {
    let (dir, file) = ledger();
    rebuild(&file);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!(b.seq, Some(10), "{b}");
    assert!(b.what.contains("chain was rewritten"), "{b}");

    // Deleting the checkpoints as well: with the public key, that is a failure too.
    std::fs::remove_file(dir.path().join(checkpoint::FILE)).unwrap();
    let b = verify_dir(dir.path()).unwrap_err();
    assert!(b.what.contains("no checkpoint found"), "{b}");
    // Forged checkpoints need the private key.
    let forger = SigningKey::from_bytes(&[9; 32]);
    let last = lines(&file).last().cloned().unwrap();
    let (_, hash) = unseal(&last).unwrap();
    let forged = Checkpoint::sign(&forger, 25, hash, "2026-01-06T11:00:00.000Z", GENESIS);
    std::fs::write(
        dir.path().join(checkpoint::FILE),
        serde_json::to_string(&forged).unwrap() + "\n",
    )
    .unwrap();
    let b = verify_dir(dir.path()).unwrap_err();
    assert!(b.what.contains("signature does not verify"), "{b}");
}

#[test]
fn the_chain_runs_across_rotated_files_and_a_missing_file_breaks_it() {
    let (dir, files) = rotated();
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!((summary.records, summary.files), (40, files.len()));
    std::fs::remove_file(&files[1]).unwrap();
    let b = verify_dir(dir.path()).unwrap_err();
    assert!(b.what.contains("a record was removed"), "{b}");
}

#[test]
fn a_restarted_writer_continues_the_chain_and_cuts_a_torn_line() {
    let (dir, file) = ledger();
    // A crash in the middle of a write leaves a line without its end.
    let mut torn = std::fs::read_to_string(&file).unwrap();
    torn.push_str("{\"seq\":26,\"instance\":\"test-1\",\"ts\":\"2026");
    std::fs::write(&file, torn).unwrap();
    write(dir.path(), 5, u64::MAX);
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!(summary.range, Some((1, 30)));
}

fn verify_with(dir: &Path, options: VerifyOptions) -> Result<Summary, Break> {
    verify(&[dir.to_path_buf()], &options, &mut |_| {})
}

fn with_key() -> VerifyOptions {
    VerifyOptions {
        public_key: Some(key().verifying_key()),
        ..VerifyOptions::default()
    }
}

#[test]
fn a_start_past_genesis_needs_a_signed_checkpoint_as_its_anchor() {
    let (dir, _) = ledger();
    // Checkpoints at 0, 10, 20 and 25: seq 11 starts from the one at 10.
    let summary = verify_with(
        dir.path(),
        VerifyOptions {
            from_seq: Some(11),
            to_seq: Some(22),
            ..with_key()
        },
    )
    .unwrap();
    assert_eq!((summary.records, summary.range), (12, Some((11, 22))));
    for (from, key) in [(5, true), (11, false)] {
        let options = VerifyOptions {
            from_seq: Some(from),
            public_key: key.then(|| self::key().verifying_key()),
            ..VerifyOptions::default()
        };
        let b = verify_with(dir.path(), options).unwrap_err();
        assert!(
            b.what.contains("no signed checkpoint at seq"),
            "{from}: {b}"
        );
    }
}

/// Rotated files of a 40-record ledger, in order.
fn rotated() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 40, 2_000);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && !p.ends_with(checkpoint::FILE))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    (dir, files)
}

#[test]
fn a_deleted_head_file_or_cut_head_breaks_unless_a_signed_checkpoint_anchors_the_rest() {
    let (dir, files) = rotated();
    let first_of_second = {
        let (canonical, _) = unseal(&lines(&files[1])[0]).unwrap();
        serde_json::from_str::<Record>(&canonical).unwrap().seq
    };
    std::fs::remove_file(&files[0]).unwrap();
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!(b.seq, Some(first_of_second), "{b}");
    assert!(b.what.contains("its head was removed"), "{b}");

    // Cutting the first records of the (new) first file is the same break.
    let mut l = lines(&files[1]);
    l.drain(..2);
    save(&files[1], &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert!(b.what.contains("its head was removed"), "{b}");
}

#[test]
fn a_tail_appended_after_the_last_checkpoint_is_unsigned_and_fails_unless_accepted() {
    let (dir, file) = ledger();
    // Forged records, correctly chained to the real head.
    let mut l = lines(&file);
    let (canonical, head) = unseal(l.last().unwrap()).unwrap();
    let mut record: Record = serde_json::from_str(&canonical).unwrap();
    let mut prev = head.to_owned();
    for seq in 26..=28 {
        record.seq = seq;
        record.prev_hash = prev.clone();
        record.entry.decision = Some(String::from("allow"));
        let (hash, line) = seal(&record).unwrap();
        prev = hash;
        l.push(line);
    }
    save(&file, &l);
    let b = verify_dir(dir.path()).unwrap_err();
    assert_eq!((b.line, b.seq), (26, Some(26)), "{b}");
    assert!(
        b.what.contains("3 record(s) from here on are not covered"),
        "{b}"
    );
    let summary = verify_with(
        dir.path(),
        VerifyOptions {
            allow_unsigned_tail: true,
            ..with_key()
        },
    )
    .unwrap();
    assert_eq!((summary.records, summary.unsigned_tail), (28, 3));
    // Without the public key nothing counts as signed.
    let b = verify_with(dir.path(), VerifyOptions::default()).unwrap_err();
    assert!(b.what.contains("no signature was checked"), "{b}");
}

/// The checkpoint file's lines.
fn checkpoint_lines(dir: &Path) -> Vec<String> {
    lines(&dir.join(checkpoint::FILE))
}

#[test]
fn a_checkpoint_removed_from_the_middle_or_the_start_breaks_the_links() {
    for removed in [1, 0] {
        let (dir, _) = ledger();
        let mut l = checkpoint_lines(dir.path());
        assert_eq!(l.len(), 4, "at 0, 10, 20 and 25");
        l.remove(removed);
        save(&dir.path().join(checkpoint::FILE), &l);
        let b = verify_dir(dir.path()).unwrap_err();
        assert!(b.what.contains("does not link"), "removed #{removed}: {b}");
    }
}

#[test]
fn the_last_checkpoint_dropped_with_its_records_is_caught_only_by_a_witness() {
    let (dir, file) = ledger();
    // The attacker cuts the ledger back to the checkpoint at 20 and drops the one at 25.
    let witness = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join(checkpoint::FILE),
        witness.path().join(checkpoint::FILE),
    )
    .unwrap();
    let mut l = lines(&file);
    l.truncate(20);
    save(&file, &l);
    let mut cps = checkpoint_lines(dir.path());
    cps.pop();
    save(&dir.path().join(checkpoint::FILE), &cps);
    // Alone, the shortened ledger is consistent: the documented limit.
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!(summary.range, Some((1, 20)));
    // The witness's copy of the checkpoints shows the cut.
    let b = verify(
        &[
            dir.path().to_path_buf(),
            witness.path().join(checkpoint::FILE),
        ],
        &with_key(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(b.what.contains("ends at seq 20"), "{b}");
}

#[test]
fn everything_rewritten_and_resigned_with_another_key_fails_against_the_real_one() {
    let (dir, file) = ledger();
    rebuild(&file);
    let forger = SigningKey::from_bytes(&[9; 32]);
    let mut prev = String::from(GENESIS);
    let records = lines(&file);
    let resigned: Vec<String> = checkpoint_lines(dir.path())
        .iter()
        .map(|line| {
            let real: Checkpoint = serde_json::from_str(line).unwrap();
            let hash = if real.seq == 0 {
                String::from(GENESIS)
            } else {
                let (_, hash) = unseal(&records[real.seq as usize - 1]).unwrap();
                hash.to_owned()
            };
            let forged = Checkpoint::sign(&forger, real.seq, &hash, &real.ts, &prev);
            prev = forged.digest();
            serde_json::to_string(&forged).unwrap()
        })
        .collect();
    save(&dir.path().join(checkpoint::FILE), &resigned);
    let forged_key = VerifyOptions {
        public_key: Some(forger.verifying_key()),
        ..VerifyOptions::default()
    };
    assert!(
        verify_with(dir.path(), forged_key).is_ok(),
        "consistent in itself"
    );
    let b = verify_dir(dir.path()).unwrap_err();
    assert!(b.what.contains("signature does not verify"), "{b}");
}

#[test]
fn queries_read_the_chain_in_order_filtered_and_paged_across_files() {
    use portcullis_ledger::query::{AuditQuery, query};

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 120, 2_000);
    let files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".jsonl")
        })
        .count();
    assert!(files > 5, "rotated into {files} files");
    let run = |q: AuditQuery| query(dir.path(), "audit", &q).unwrap();
    let seqs = |records: &[serde_json::Value]| -> Vec<u64> {
        records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    };
    let all = AuditQuery {
        limit: 50,
        scan_limit: usize::MAX,
        ..AuditQuery::default()
    };

    // Pages of everything: in chain order, each resuming after the last.
    let mut seen = Vec::new();
    let mut after_seq = 0;
    let mut pages = 0;
    loop {
        let page = run(AuditQuery {
            after_seq,
            ..all.clone()
        });
        pages += 1;
        seen.extend(seqs(&page.records));
        match page.next_after_seq {
            Some(next) => after_seq = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=120).collect::<Vec<_>>());
    assert_eq!(pages, 3);

    // Records come back as written: the hash the chain holds.
    let page = run(all.clone());
    let first_line = lines(&{
        let mut f: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        f.sort();
        f.remove(0)
    })
    .remove(0);
    let (_, hash) = unseal(&first_line).unwrap();
    assert_eq!(page.records[0]["hash"], hash);

    // Filters.
    let denies = run(AuditQuery {
        decision: Some(String::from("deny")),
        limit: 1000,
        ..all.clone()
    });
    assert_eq!(
        seqs(&denies.records),
        (1..=40).map(|i| i * 3).collect::<Vec<_>>()
    );
    assert_eq!(denies.next_after_seq, None);
    let window = run(AuditQuery {
        since: Some("2026-01-06T10:00:10Z".parse().unwrap()),
        until: Some("2026-01-06T10:00:20Z".parse().unwrap()),
        limit: 1000,
        ..all.clone()
    });
    assert_eq!(
        seqs(&window.records),
        (10..20).chain(70..80).collect::<Vec<_>>()
    );
    let nobody = run(AuditQuery {
        principal: Some(String::from("User::\"bob\"")),
        limit: 1000,
        ..all.clone()
    });
    assert!(nobody.records.is_empty());

    // A page of a rare match stops after the scan limit and says where to go on.
    let short = run(AuditQuery {
        decision: Some(String::from("deny")),
        limit: 1000,
        scan_limit: 10,
        ..all.clone()
    });
    assert_eq!(seqs(&short.records), [3, 6, 9]);
    assert_eq!(short.next_after_seq, Some(10));

    // Starting late skips the earlier files; a torn last line is left alone.
    let last = the_file(dir.path());
    let mut text = std::fs::read_to_string(&last).unwrap();
    text.push_str("{\"seq\":121,\"ts\":\"2026-01");
    std::fs::write(&last, text).unwrap();
    let tail = run(AuditQuery {
        after_seq: 100,
        ..all
    });
    assert_eq!(seqs(&tail.records), (101..=120).collect::<Vec<_>>());
    assert_eq!(tail.next_after_seq, None);
}

/// Many appenders on two runtimes at once (a multi-threaded one and a single-threaded one
/// on another thread): every append gets its own seq, the chain verifies, and appenders
/// ready together share batches.
#[test]
fn concurrent_appenders_on_two_runtimes_make_one_chain_in_shared_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keeper) = Ledger::open(config(dir.path(), 4_000)).unwrap();
    let append_many = |ledger: std::sync::Arc<Ledger>, tasks: u64, base: u64| async move {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let ledger = std::sync::Arc::clone(&ledger);
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..20 {
                        let e = entry(base + t * 20 + i);
                        seqs.push(ledger.append(e, Duration::from_secs(5)).await.unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for h in handles {
            seqs.extend(h.await.unwrap());
        }
        seqs
    };
    let other = {
        let ledger = std::sync::Arc::clone(&ledger);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(append_many(ledger, 30, 10_000))
        })
    };
    let mut seqs = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(append_many(std::sync::Arc::clone(&ledger), 30, 0));
    seqs.extend(other.join().unwrap());
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1_200).collect::<Vec<u64>>());
    let batches = ledger
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(batches < 600, "{batches} batches for 1,200 records");
    drop(ledger);
    keeper.join().unwrap();
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!((summary.records, summary.range), (1_200, Some((1, 1_200))));
    assert_eq!(summary.last_checkpoint, Some(1_200));
}

/// Entries queued outside any runtime, and one whose drain task was spawned on a runtime
/// that shut down before running it: the keeper thread writes them, and later appends are
/// drained again as usual.
#[test]
fn entries_no_drain_task_takes_are_written_by_the_keeper() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keeper) = Ledger::open(config(dir.path(), u64::MAX)).unwrap();
    assert!(ledger.append_nowait(entry(1)));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            // Spawns a drain task, then the runtime goes away without running it.
            assert!(ledger.append_nowait(entry(2)));
        });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ledger
        .stats()
        .written
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the keeper did not write"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let seq = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(ledger.append(entry(3), Duration::from_secs(1)))
        .unwrap();
    assert_eq!(seq, 3);
    drop(ledger);
    keeper.join().unwrap();
    assert_eq!(verify_dir(dir.path()).unwrap().range, Some((1, 3)));
}

/// With `fsync`, drains run on the runtime's blocking pool: concurrent appends still make
/// one chain, each acknowledged once its batch is synced.
#[test]
fn with_fsync_drains_on_the_blocking_pool_make_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, keeper) = Ledger::open(LedgerConfig {
        fsync: true,
        ..config(dir.path(), u64::MAX)
    })
    .unwrap();
    let mut seqs = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    let ledger = std::sync::Arc::clone(&ledger);
                    tokio::spawn(async move {
                        ledger
                            .append(entry(i), Duration::from_secs(5))
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut seqs = Vec::new();
            for h in handles {
                seqs.push(h.await.unwrap());
            }
            seqs
        });
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    drop(ledger);
    keeper.join().unwrap();
    let summary = verify_dir(dir.path()).unwrap();
    assert_eq!((summary.records, summary.last_checkpoint), (50, Some(50)));
}
