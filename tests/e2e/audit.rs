//! The decision audit ledger of a running proxy: every decision and refusal recorded before
//! it is answered, redacted by band, verifiable, and complete across a crash.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_sinks::testing::RedisServer;
use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream, raw_request};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

#[test]
fn every_decision_is_recorded_redacted_and_verifiable() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let alice = keys.token("alice", json!({"device_id": "laptop-1"}));
    let gina = keys.token("gina", json!({}));

    let allowed = p.get(D1, Some(&alice), &[]);
    assert_eq!(allowed.status, 200);
    let allowed_id = allowed.headers["x-portcullis-decision-id"].clone();
    let denied = p.request("PUT", D1, Some(&gina), &[]);
    assert_eq!(denied.status, 403);
    let denied_id = denied.json()["decision_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(p.get(D1, None, &[]).status, 401);
    assert_eq!(p.get("/v1/x%2Fy", Some(&alice), &[]).status, 400);
    assert_eq!(p.get("/healthz", None, &[]).status, 200);

    let records = p.audit_records();
    let find = |id: &str| {
        records
            .iter()
            .find(|r| r["decision_id"] == id)
            .unwrap_or_else(|| panic!("no record for {id}: {records:?}"))
    };
    let a = find(&allowed_id);
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["principal"], "User::\"alice\"");
    assert_eq!(a["action"], "document.read");
    assert_eq!(a["resource"], "Document::\"d1\"");
    assert_eq!(a["policies"], json!(["role:guardian"]));
    assert_eq!(a["route"], "get_document");
    assert_eq!(a["context"]["band"], "AMBER");
    let ip = a["context"]["ip"].as_str().expect("ip");
    assert!(
        ip.starts_with("sha256:") && !ip.contains("127.0.0.1"),
        "AMBER redacts the IP: {ip}"
    );
    assert!(
        a["context"]["device_id"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let context = a["context"].as_object().expect("context");
    let keys: Vec<&str> = context.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "band",
            "device_id",
            "hour",
            "ip",
            "mfa",
            "risk_score",
            "weekday"
        ]
    );
    assert_eq!(
        (context["mfa"].as_str(), context["risk_score"].as_str()),
        (Some("false"), Some("0"))
    );
    let hour: u8 = context["hour"]
        .as_str()
        .expect("hour")
        .parse()
        .expect("a number");
    let weekday: u8 = context["weekday"]
        .as_str()
        .expect("weekday")
        .parse()
        .expect("a number");
    assert!(hour < 24 && (1..=7).contains(&weekday), "{context:?}");
    assert!(a["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    let d = find(&denied_id);
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("no_permit"))
    );
    let reasons: Vec<&str> = records
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"missing"),
        "the 401 is recorded: {reasons:?}"
    );
    assert!(
        reasons.contains(&"encoded_slash"),
        "the 400 is recorded: {reasons:?}"
    );
    assert_eq!(records.len(), 4, "the public route is not recorded");
    let text: String = records.iter().map(ToString::to_string).collect();
    assert!(
        !text.contains(&alice) && !text.contains(&gina),
        "tokens never reach the ledger"
    );

    let out = p.verify_ledger();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: 4 records"), "{stdout}");

    // A changed record is caught by the command, naming where.
    let file = std::fs::read_dir(p.ledger_dir())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-"))
        })
        .expect("ledger file");
    let tampered = std::fs::read_to_string(&file).expect("read").replacen(
        "\"decision\":\"deny\"",
        "\"decision\":\"allow\"",
        1,
    );
    std::fs::write(&file, tampered).expect("write");
    let out = p.verify_ledger();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BROKEN") && stderr.contains(":2: seq 2: the hash does not match"),
        "{stderr}"
    );

    let metrics = p.metrics_text();
    assert!(
        metrics.contains("portcullis_audit_records_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_audit_queue_depth 0"),
        "{metrics}"
    );
}

#[test]
fn a_crash_under_load_loses_no_answered_decision_and_the_chain_continues() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let mut p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let tokens = Arc::new([
        keys.token("alice", json!({})),
        keys.token("gina", json!({})),
    ]);
    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (tokens, answered, stop, addr) = (
                Arc::clone(&tokens),
                Arc::clone(&answered),
                Arc::clone(&stop),
                p.data,
            );
            std::thread::spawn(move || {
                let mut n = 0_usize;
                while !stop.load(Ordering::Relaxed) {
                    let (method, token) = if (n + i).is_multiple_of(3) {
                        ("PUT", &tokens[1])
                    } else {
                        ("GET", &tokens[0])
                    };
                    n += 1;
                    let auth = format!("Bearer {token}");
                    let Some(r) = raw_request(addr, method, D1, &[("authorization", &auth)]) else {
                        continue;
                    };
                    if let Some(id) = r.headers.get("x-portcullis-decision-id") {
                        answered.lock().expect("lock").insert(id.clone());
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    p.kill9();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let answered = answered.lock().expect("lock").clone();
    assert!(
        answered.len() > 50,
        "the load ran: {} answers",
        answered.len()
    );

    p.restart();
    let records = p.audit_records();
    let recorded: HashSet<String> = records
        .iter()
        .filter_map(|r| r["decision_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = answered.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "{} answered decisions have no record: {missing:?}",
        missing.len()
    );
    let out = p.verify_ledger();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The chain goes on from where the crash left it.
    let last_seq = records.last().expect("records")["seq"]
        .as_u64()
        .expect("seq");
    assert_eq!(p.get(D1, Some(&tokens[0]), &[]).status, 200);
    let after = p.audit_records();
    assert_eq!(
        after.last().expect("records")["seq"].as_u64(),
        Some(last_seq + 1)
    );
    let out = p.verify_ledger();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn configured_masks_hash_the_principal_and_drop_context_on_amber_routes() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "audit:\n  redact:\n    hash: [principal]\n    drop: [ip, device_id]\n",
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({"device_id": "laptop-1"}));
    let r = p.get(D1, Some(&alice), &[]);
    assert_eq!(r.status, 200);
    let id = r.headers["x-portcullis-decision-id"].clone();
    let records = p.audit_records();
    let record = records
        .iter()
        .find(|r| r["decision_id"] == id.as_str())
        .expect("the decision's record");
    assert_eq!(record["context"]["band"], "AMBER");
    let principal = record["principal"].as_str().expect("principal");
    assert!(
        principal.starts_with("sha256:") && !principal.contains("alice"),
        "{record}"
    );
    assert!(record["context"].get("ip").is_none(), "{record}");
    assert!(record["context"].get("device_id").is_none(), "{record}");
    assert!(
        record["context"]["hour"].is_string(),
        "unmasked fields stay: {record}"
    );
    // The same principal hashes the same way: records stay linkable.
    assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
    let again = p.audit_records();
    assert_eq!(again.last().expect("record")["principal"], principal);
}

/// The `seq` fields of `stream`, in stream order.
fn seqs(redis: &RedisServer, stream: &str) -> Vec<u64> {
    redis
        .field_values(stream, "seq")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[test]
fn the_redis_sink_loses_nothing_when_redis_goes_away_and_keeps_the_order() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let port = crate::harness::free_port();
    let mut redis = RedisServer::start(port);
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("audit:\n  redis:\n    url: redis://127.0.0.1:{port}/\n    stream: audit-e2e\n"),
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let burst = |n: usize| {
        for _ in 0..n {
            assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
        }
    };
    let wait_complete = |redis: &RedisServer| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let expected = p.audit_records().len();
            let seqs = seqs(redis, "audit-e2e");
            if seqs.len() == expected {
                return seqs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stream has {} of {expected}:\n{}",
                seqs.len(),
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    burst(20);
    let seqs = wait_complete(&redis);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // Redis goes away mid-run: requests are still answered (the file is the spool).
    drop(redis);
    burst(30);
    // The sink follows the ledger on its own schedule: give it time to try and fail.
    p.wait_for(
        || {
            p.metric("portcullis_audit_sink_errors_total", &[("sink", "redis")])
                .unwrap_or(0.0)
                >= 1.0
                || p.log().contains("not forwarded to Redis")
        },
        "the outage is noticed",
    );
    // It comes back empty (no persistence): the sink sends the whole ledger again, in order.
    redis = RedisServer::start(port);
    let seqs = wait_complete(&redis);
    assert_eq!(seqs.len(), p.audit_records().len());
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, none lost"
    );

    // The checkpoints went to the witness stream too, every one of them again after the
    // outage: a copy outside the directory.
    let local = std::fs::read_to_string(p.ledger_dir().join("checkpoints.jsonl")).expect("cps");
    let local: Vec<&str> = local.lines().collect();
    let witness = p.dir.join("witness");
    std::fs::create_dir_all(&witness).expect("witness dir");
    p.wait_for(
        || {
            let held = redis.field_values("audit-e2e:checkpoints", "checkpoint");
            std::fs::write(witness.join("checkpoints.jsonl"), held.join("\n") + "\n")
                .expect("write");
            held == local
        },
        "the witness holds every checkpoint",
    );
    let out = p.verify_ledger_with(&["--allow-unsigned-tail", witness.to_str().expect("utf-8")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(redis);
}

/// Many clients at once against a ledger queue of one entry.
fn hammer(p: &Portcullis, token: &str) -> Vec<crate::harness::Reply> {
    let replies = std::sync::Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (replies, addr, auth) = (Arc::clone(&replies), p.data, format!("Bearer {token}"));
            std::thread::spawn(move || {
                for _ in 0..40 {
                    if let Some(r) = raw_request(addr, "GET", D1, &[("authorization", &auth)]) {
                        replies.lock().expect("lock").push(r);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    Arc::try_unwrap(replies)
        .expect("the clients are done")
        .into_inner()
        .expect("lock")
}

#[test]
fn a_full_audit_queue_refuses_requests_by_default_and_drops_only_when_told() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let alice = keys.token("alice", json!({}));

    // Default: wait (here 0 ms), then refuse with 503 — never an unrecorded answer.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "audit:\n  queue_capacity: 1\n  max_wait_ms: 0\n",
    );
    p.seed(world::import());
    let replies = hammer(&p, &alice);
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        !refused.is_empty(),
        "a queue of one under 8 clients overflows"
    );
    assert!(
        refused
            .iter()
            .all(|r| r.json()["reason"] == "audit_queue_full")
    );
    let recorded: HashSet<String> = p
        .audit_records()
        .iter()
        .filter_map(|r| r["decision_id"].as_str().map(str::to_owned))
        .collect();
    for r in replies.iter().filter(|r| r.status == 200) {
        let id = &r.headers["x-portcullis-decision-id"];
        assert!(recorded.contains(id), "answered {id} without a record");
    }
    assert!(
        p.metric("portcullis_audit_refused_total", &[])
            .unwrap_or(0.0)
            >= refused.len() as f64
    );
    drop(p);

    // audit.on_full: drop — forwarded without a record, and counted.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "audit:\n  queue_capacity: 1\n  on_full: drop\n",
    );
    p.seed(world::import());
    let replies = hammer(&p, &alice);
    assert!(
        replies.iter().all(|r| r.status == 200),
        "nothing refused in drop mode"
    );
    let dropped = p
        .metric("portcullis_audit_dropped_total", &[])
        .unwrap_or(0.0);
    let written = p.audit_records().len() as f64;
    assert!(dropped >= 1.0, "drops are counted");
    assert_eq!(
        written + dropped,
        replies.len() as f64,
        "every request is either recorded or counted"
    );
}

#[test]
fn a_sink_can_send_ocsf_events_that_point_back_into_the_ledger() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let port = crate::harness::free_port();
    let redis = RedisServer::start(port);
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "audit:\n  redis:\n    url: redis://127.0.0.1:{port}/\n    stream: ocsf-e2e\n    format: ocsf\n"
        ),
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let r = p.get(D1, Some(&alice), &[]);
    assert_eq!(r.status, 200);
    let id = r.headers["x-portcullis-decision-id"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let event: serde_json::Value = loop {
        let raw = redis.cli(&["XRANGE", "ocsf-e2e", "-", "+"]);
        let found = raw
            .lines()
            .filter(|l| l.contains(id.as_str()))
            .find_map(|l| serde_json::from_str(l).ok());
        if let Some(event) = found {
            break event;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event for {id}:\n{raw}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(event["class_uid"], 6003, "{event}");
    assert_eq!(event["activity_id"], 2, "a read: {event}");
    assert_eq!(event["status"], "Success");
    assert_eq!(event["actor"]["user"]["uid"], "User::\"alice\"");
    assert_eq!(event["api"]["request"]["uid"], id.as_str());
    let ledger = p.audit_records();
    let record = ledger
        .iter()
        .find(|r| r["decision_id"] == id.as_str())
        .expect("the decision's record");
    assert_eq!(
        event["unmapped"]["hash"], record["hash"],
        "matches the ledger"
    );
    assert_eq!(event["metadata"]["sequence"], record["seq"]);
}

/// A small tmpfs mounted for one test, unmounted when dropped. Needs root, as `.ci/run`
/// has; `None` (and the test says so) elsewhere.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(bytes: usize) -> Option<Self> {
        let dir = crate::harness::temp_dir("tmpfs");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(dir))
    }

    /// Fills what is left with a file; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = [0_u8; 4096];
        while file.write_all(&block).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn on_a_full_disk_every_unrecorded_request_is_refused_or_counted() {
    let Some(disk) = SmallDisk::mount(1 << 20) else {
        panic!("this test mounts a tmpfs and needs root (as .ci/run has)");
    };
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let alice = keys.token("alice", json!({}));
    let ledger = disk.0.join("audit");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("audit:\n  dir: {}\n  on_full: drop\n", ledger.display()),
    );
    p.seed(world::import());
    assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
    let recorded_before = p.audit_records().len();
    let filler = disk.fill();

    // drop: forwarded without a record, and every one of them counted.
    let sent = 20;
    for _ in 0..sent {
        assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
    }
    // The last page the file had may still take a few records; every other one is counted.
    p.wait_for(
        || {
            let dropped = p
                .metric("portcullis_audit_dropped_total", &[])
                .unwrap_or(0.0);
            let written = (p.audit_records().len() - recorded_before) as f64;
            dropped >= 1.0 && dropped + written == f64::from(sent)
        },
        "each request the full disk kept from the ledger is counted",
    );
    let recorded_before = p.audit_records().len();

    // Room again: records are written again, and the chain still verifies.
    std::fs::remove_file(filler).expect("room");
    assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
    p.wait_for(
        || p.audit_records().len() == recorded_before + 1,
        "recorded again",
    );
    let out = p.verify_ledger();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(p);

    // wait (the default): a request that cannot be recorded is refused.
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("audit:\n  dir: {}\n", disk.0.join("audit-wait").display()),
    );
    p.seed(world::import());
    let filler = disk.fill();
    let r = p.get(D1, Some(&alice), &[]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (503, Some("audit_unavailable"))
    );

    // An admin change the ledger cannot record is not made either.
    let r = p.admin_call(
        "PUT",
        "/v1/principals/users/dana",
        &json!({"kind": "user", "id": "dana", "tenant": "t1"}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json()["type"],
        "https://portcullis.dev/problems/ledger-unavailable"
    );
    std::fs::remove_file(filler).expect("room");
    let r = p.admin_call("GET", "/v1/principals/users/dana", &json!(null));
    assert_eq!(r.status, 404, "the refused change was not made: {}", r.body);
}
