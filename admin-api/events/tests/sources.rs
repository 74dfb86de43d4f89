//! The queue sources against real queues — a `redis-server` and moto's SQS server of the
//! test's own — into a real store (an SQLite file, or a scratch PostgreSQL database):
//! every event type of the seed fixtures, then a generated mix with duplicates, reordering
//! and poison, whose final state the test computes on its own; two replicas in one Redis
//! group; a consumer killed mid-batch; PostgreSQL away while both queues hold events; a
//! slow batch kept from another consumer; other services' audit events into the ledger.
//!
//! `EVENT_SOAK=<n>` sets the size of the soak (default 2,000 events; BENCHMARKS.md
//! records 100,000 in a release build).

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail the test loudly"
)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_events::envelope::SignatureKeys;
use portcullis_events::sources::redis::RedisSource;
use portcullis_events::sources::sqs::SqsSource;
use portcullis_events::{EventMetrics, Ingest};
use portcullis_model::*;
use portcullis_sinks::testing::{Moto, RedisServer, free_port};
use portcullis_store::{Import, SqlStore, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

mod common;
use common::fixture;

const TENANT: &str = "tenant_soak";
const OUTCOMES: [&str; 5] = [
    "applied",
    "acknowledged",
    "duplicate",
    "stale",
    "dead_lettered",
];

/// The seed fixtures in the order their effects build on each other; all apply but the
/// invitation, which is acknowledged.
const FIXTURES: [&str; 11] = [
    "000_user_created.json",
    "000_user_role_assigned.json",
    "000_user_space_access_granted.json",
    "000_user_status_changed.json",
    "001_tenant_member_joined.json",
    "001_tenant_member_role_changed.json",
    "001_invitation_created.json",
    "001_team_members_added.json",
    "001_user_session_revoked.json",
    "001_tenant_member_removed.json",
    "004_entity_archived.json",
];

/// What a stream of events must leave, worked out here, apart from the code under test.
#[derive(Debug, Default, PartialEq, Eq)]
struct State {
    status: BTreeMap<String, PrincipalStatus>,
    tenant_role: BTreeMap<String, Vec<String>>,
    groups: BTreeMap<String, BTreeSet<String>>,
    sessions: BTreeSet<String>,
}

/// A generated mix of seed-001 events over principals the store holds before.
struct Workload {
    users: Vec<String>,
    /// The message bodies, in the order they are sent.
    messages: Vec<String>,
    /// Outcomes by name, when the messages are taken in the order sent.
    outcomes: BTreeMap<&'static str, u64>,
    expected: State,
}

enum Kind {
    Status(PrincipalStatus),
    Role(String),
    Team(String),
    Session(String),
    Invitation,
    Poison,
}

impl Workload {
    /// `events` events over `users` principals. With `ordered`, events about one principal
    /// that overwrite its state are many and delivered out of order (some become stale,
    /// which only a single consumer in the order sent makes predictable); without, each
    /// principal gets at most one such event. 1% poison, 5% duplicates.
    fn new(seed: u64, users: usize, events: usize, ordered: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let users: Vec<String> = (0..users).map(|i| format!("soak-{seed}-{i}")).collect();
        // Recent: a revoked session is kept 30 days after its event.
        let base =
            jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 86_400).unwrap();
        let mut once = HashSet::new();
        let mut planned: Vec<(String, Kind, String, String, usize)> = Vec::new();
        for i in 0..events {
            let user = users[rng.gen_range(0..users.len())].clone();
            let id = format!("evt-{seed}-{i}");
            let at = (base + jiff::SignedDuration::from_secs(i as i64)).to_string();
            let roll = rng.gen_range(0..100);
            let overwriting = roll < 60 && (ordered || once.insert(user.clone()));
            let kind = match roll {
                0 => Kind::Poison,
                _ if overwriting && roll < 35 => Kind::Status(if rng.gen_bool(0.5) {
                    PrincipalStatus::Inactive
                } else {
                    PrincipalStatus::Active
                }),
                _ if overwriting => {
                    Kind::Role(["member", "admin", "guest"][rng.gen_range(0..3)].to_owned())
                }
                1..=79 => Kind::Team(format!("team-{}", rng.gen_range(0..5))),
                80..=94 => Kind::Session(format!("sess-{seed}-{i}")),
                _ => Kind::Invitation,
            };
            let body = match &kind {
                Kind::Status(s) => {
                    json!({"id": id, "type": if *s == PrincipalStatus::Active { "user.reactivated" } else { "user.deactivated" },
                    "timestamp": at, "userId": user, "data": {}})
                }
                Kind::Role(r) => {
                    json!({"id": id, "type": "tenant.member_role_changed", "timestamp": at,
                    "tenantId": TENANT, "data": {"tenantId": TENANT, "userId": user, "newRoleName": r}})
                }
                Kind::Team(t) => json!({"id": id, "type": "team.members_added", "timestamp": at,
                    "data": {"teamId": t, "userIds": [user]}}),
                Kind::Session(s) => {
                    json!({"id": id, "type": "user.session_revoked", "timestamp": at,
                    "userId": user, "data": {"userId": user, "sessionId": s}})
                }
                Kind::Invitation => {
                    json!({"id": id, "type": "invitation.created", "timestamp": at, "data": {}})
                }
                Kind::Poison => match rng.gen_range(0..3) {
                    0 => json!(format!("not an event {i}")),
                    1 => json!({"id": id, "type": "user.teleported", "timestamp": at, "data": {}}),
                    _ => json!({"id": id, "type": "user.deactivated", "timestamp": at, "data": {}}),
                },
            };
            let body = match body {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            planned.push((id, kind, user, body, i));
        }
        // Reordered: each event swapped with one up to 8 places later.
        let last = planned.len() - 1;
        for i in 0..last {
            let j = (i + rng.gen_range(0..=8)).min(last);
            planned.swap(i, j);
        }
        // Duplicated: 5% sent again, up to 50 places later.
        let mut keyed: Vec<(usize, usize)> = Vec::new();
        for (i, event) in planned.iter().enumerate() {
            keyed.push((i * 100, i));
            if rng.gen_range(0..100) < 5 && !matches!(event.1, Kind::Poison) {
                keyed.push(((i + rng.gen_range(1..=50)) * 100 + 50, i));
            }
        }
        keyed.sort_unstable();
        let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();

        let mut expected = State::default();
        for u in &users {
            expected.status.insert(u.clone(), PrincipalStatus::Active);
            expected
                .tenant_role
                .insert(u.clone(), vec![String::from("member")]);
            expected.groups.insert(u.clone(), BTreeSet::new());
        }
        let mut outcomes: BTreeMap<&'static str, u64> = OUTCOMES.iter().map(|o| (*o, 0)).collect();
        let mut taken = HashSet::new();
        let mut newest: BTreeMap<String, usize> = BTreeMap::new();
        for &k in &order {
            let (id, kind, user, _, at) = &planned[k];
            let (user, at) = (user.clone(), *at);
            let outcome = if matches!(kind, Kind::Poison) {
                "dead_lettered"
            } else if !taken.insert(id.clone()) {
                "duplicate"
            } else {
                match kind {
                    Kind::Status(_) | Kind::Role(_) => {
                        // Its time is its index as generated.
                        if newest.get(&user).is_some_and(|&n| n > at) {
                            "stale"
                        } else {
                            newest.insert(user.clone(), at);
                            match kind {
                                Kind::Status(s) => {
                                    expected.status.insert(user, *s);
                                }
                                Kind::Role(r) => {
                                    expected.tenant_role.insert(user, vec![r.clone()]);
                                }
                                _ => unreachable!(),
                            }
                            "applied"
                        }
                    }
                    Kind::Team(t) => {
                        expected.groups.get_mut(&user).unwrap().insert(t.clone());
                        "applied"
                    }
                    Kind::Session(s) => {
                        expected.sessions.insert(s.clone());
                        "applied"
                    }
                    Kind::Invitation => "acknowledged",
                    Kind::Poison => unreachable!(),
                }
            };
            *outcomes.get_mut(outcome).unwrap() += 1;
        }
        let messages = order.iter().map(|&k| planned[k].3.clone()).collect();
        Self {
            users,
            messages,
            outcomes,
            expected,
        }
    }

    /// Puts the workload's principals in `store`: active, members of the tenant.
    async fn prepare(&self, store: &SqlStore) {
        let tenant = Scope::Entity(format!("Tenant::\"{TENANT}\"").parse().unwrap());
        store
            .import(&Import {
                principals: self
                    .users
                    .iter()
                    .map(|u| Principal {
                        kind: PrincipalKind::User,
                        id: u.clone(),
                        status: PrincipalStatus::Active,
                        tenant: Some(TENANT.to_owned()),
                        groups: Vec::new(),
                        attributes: PrincipalAttributes::default(),
                        trusted_devices: Vec::new(),
                    })
                    .collect(),
                assignments: self
                    .users
                    .iter()
                    .map(|u| Assignment {
                        id: format!("start:{u}"),
                        principal: principal_ref(PrincipalKind::User, u),
                        role: String::from("member"),
                        scope: tenant.clone(),
                        conditions: AssignmentConditions::default(),
                        assigned_by: None,
                        reason: None,
                    })
                    .collect(),
                ..Import::default()
            })
            .await
            .unwrap();
    }

    /// What the store holds for the workload's principals.
    async fn state(&self, store: &SqlStore) -> State {
        let tenant = Scope::Entity(format!("Tenant::\"{TENANT}\"").parse().unwrap());
        let mut state = State::default();
        for u in &self.users {
            let p = principal_ref(PrincipalKind::User, u);
            let principal = store.get_principal(&p).await.unwrap().unwrap();
            state.status.insert(u.clone(), principal.status);
            state
                .groups
                .insert(u.clone(), principal.groups.into_iter().collect());
            let roles = store
                .assignments_of(&p)
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.scope == tenant)
                .map(|a| a.role)
                .collect();
            state.tenant_role.insert(u.clone(), roles);
        }
        state.sessions = store
            .load_state()
            .await
            .unwrap()
            .revoked_sessions
            .into_iter()
            .map(|s| s.session_id)
            .filter(|s| s.starts_with("sess-"))
            .collect();
        state
    }
}

/// A seeded SQLite store holding the principals of `Workload::new(seed, users, events,
/// ordered)`, and that workload; the directory lives as long as the store is used.
async fn prepared(
    seed: u64,
    users: usize,
    events: usize,
    ordered: bool,
) -> (tempfile::TempDir, SqlStore, Workload) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::connect(&portcullis_store::StoreConfig::Sqlite {
        path: dir.path().join("store.db"),
    })
    .await
    .unwrap();
    let workload = prepared_in(&store, seed, users, events, ordered).await;
    (dir, store, workload)
}

/// A store in a scratch PostgreSQL database (dropped with the guard).
async fn postgres_store(tag: &str) -> (portcullis_store::scratch::ScratchPostgres, SqlStore) {
    let db = portcullis_store::scratch::ScratchPostgres::create(tag)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable (see tests/setup): {e}"));
    let store = SqlStore::connect(&portcullis_store::StoreConfig::Postgres {
        url: db.url.clone(),
    })
    .await
    .unwrap();
    (db, store)
}

/// [`prepared`] in a store of the caller's.
async fn prepared_in(
    store: &SqlStore,
    seed: u64,
    users: usize,
    events: usize,
    ordered: bool,
) -> Workload {
    common::seed(store).await;
    let workload = Workload::new(seed, users, events, ordered);
    workload.prepare(store).await;
    workload
}

/// Every dead letter, page by page.
async fn all_dead_letters(store: &SqlStore) -> Vec<portcullis_model::events::DeadLetter> {
    let mut all: Vec<portcullis_model::events::DeadLetter> = Vec::new();
    loop {
        let after = all.last().map(|l| l.id.clone());
        let page = store.dead_letters(after.as_deref(), 500).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

fn count(metrics: &[&EventMetrics], kind: &str, outcome: &str) -> u64 {
    metrics
        .iter()
        .map(|m| common::total(&m.taken, &[("source", kind), ("outcome", outcome)]))
        .sum()
}

fn taken(metrics: &[&EventMetrics], kind: &str) -> u64 {
    OUTCOMES.iter().map(|o| count(metrics, kind, o)).sum()
}

/// Waits until `metrics` counted `n` messages from `kind` sources.
async fn until_taken(metrics: &[&EventMetrics], kind: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while taken(metrics, kind) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} messages taken",
            taken(metrics, kind)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_source(redis: &RedisServer, stream: &str, consumer: &str) -> RedisSource {
    RedisSource {
        url: redis.url(),
        stream: stream.to_owned(),
        group: String::from("portcullis"),
        consumer: consumer.to_owned(),
        field: String::from("event"),
        batch: 50,
        block_ms: 200,
        claim_idle_ms: 500,
    }
}

async fn xadd(redis: &RedisServer, stream: &str, bodies: impl IntoIterator<Item = String>) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for body in bodies {
        pipe.xadd(stream, "*", &[("event", body)]).ignore();
    }
    let () = pipe.query_async(&mut con).await.unwrap();
}

fn fixtures() -> Vec<String> {
    FIXTURES.iter().map(|f| fixture(f)).collect()
}

/// The fixtures' effects, spot-checked: each source took them as the ingestion path does.
async fn fixtures_took_effect(store: &SqlStore) {
    let dana = principal_ref(PrincipalKind::User, "7f3a2c10-5b1e-4d2a-9c11-0a6f3e2d9b01");
    assert_eq!(
        store.get_principal(&dana).await.unwrap().unwrap().status,
        PrincipalStatus::Suspended
    );
    assert!(
        store
            .get_assignment("01JGZ5Q8W3V2K7N4M6P9R1T0XA")
            .await
            .unwrap()
            .is_some()
    );
    assert!(common::issuer_archived(store).await);
}

fn assert_outcomes(metrics: &[&EventMetrics], kind: &str, workload: &Workload, fixtures: bool) {
    for outcome in OUTCOMES {
        let mut want = workload.outcomes[outcome];
        if fixtures {
            want += match outcome {
                "applied" => 10,
                "acknowledged" => 1,
                _ => 0,
            };
        }
        assert_eq!(count(metrics, kind, outcome), want, "{outcome}");
    }
}

/// Every fixture, then the mix in the order sent: every outcome as computed, the final
/// state as computed; each dead letter kept with its reason; the group left with nothing
/// pending. The soak: its throughput is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_every_kind_in_order_with_duplicates_reordering_and_poison() {
    let events = std::env::var("EVENT_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let (_dir, store, workload) = prepared(1, (events / 20).max(10), events, true).await;
    let redis = RedisServer::start(free_port());
    xadd(&redis, "events", fixtures()).await;
    // An entry without the field that holds the event.
    redis.cli(&["XADD", "events", "*", "payload", "{}"]);
    xadd(&redis, "events", workload.messages.clone()).await;
    let sent = FIXTURES.len() as u64 + 1 + workload.messages.len() as u64;

    let ingest = Ingest::new(store.clone(), SignatureKeys::default());
    let metrics = ingest.metrics().clone();
    let started = Instant::now();
    let consumer = tokio::spawn(portcullis_events::sources::redis::consume(
        ingest,
        redis_source(&redis, "events", "solo"),
    ));
    until_taken(&[&metrics], "redis", sent).await;
    let elapsed = started.elapsed();
    println!(
        "soak: {} messages over Redis Streams in {:.1} s: {:.0} events/s",
        sent,
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );

    fixtures_took_effect(&store).await;
    let mut want = workload.outcomes.clone();
    *want.get_mut("dead_lettered").unwrap() += 1;
    let workload = Workload {
        outcomes: want,
        ..workload
    };
    assert_outcomes(&[&metrics], "redis", &workload, true);
    assert_eq!(workload.state(&store).await, workload.expected);
    let letters = all_dead_letters(&store).await;
    assert_eq!(letters.len() as u64, workload.outcomes["dead_lettered"]);
    assert!(
        letters
            .iter()
            .any(|l| l.reason.contains("no `event` field") && l.body.contains("payload")),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|l| l.reason.contains("user.teleported")),
        "{letters:?}"
    );
    // Everything acknowledged.
    let pending = redis.cli(&["XPENDING", "events", "portcullis"]);
    assert!(pending.starts_with('0'), "pending: {pending}");
    consumer.abort();
}

/// Two replicas consume one group at once: each message taken once (copies sent twice are
/// duplicates however the two share them), no effect made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_in_one_group_make_no_double_effect() {
    let (_dir, store, workload) = prepared(2, 40, 600, false).await;
    let redis = RedisServer::start(free_port());
    xadd(&redis, "events", workload.messages.clone()).await;

    let replicas: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let ingest = Ingest::new(store.clone(), SignatureKeys::default());
            let metrics = ingest.metrics().clone();
            let mut source = redis_source(&redis, "events", name);
            source.batch = 5;
            (
                tokio::spawn(portcullis_events::sources::redis::consume(ingest, source)),
                metrics,
            )
        })
        .collect();
    let metrics: Vec<&EventMetrics> = replicas.iter().map(|(_, m)| m).collect();
    until_taken(&metrics, "redis", workload.messages.len() as u64).await;
    assert_outcomes(&metrics, "redis", &workload, false);
    for m in &metrics {
        assert!(taken(&[m], "redis") > 0, "both replicas took a share");
    }
    assert_eq!(workload.state(&store).await, workload.expected);
    for (task, _) in replicas {
        task.abort();
    }
}

/// A consumer dies mid-batch; another in its group claims what it left pending: nothing is
/// lost, nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_consumer_killed_mid_batch_loses_nothing() {
    let (_dir, store, workload) = prepared(3, 40, 600, false).await;
    let redis = RedisServer::start(free_port());
    xadd(&redis, "events", workload.messages.clone()).await;
    let sent = workload.messages.len() as u64;

    let first = Ingest::new(store.clone(), SignatureKeys::default());
    let first_metrics = first.metrics().clone();
    let mut source = redis_source(&redis, "events", "doomed");
    source.batch = 100;
    let doomed = tokio::spawn(portcullis_events::sources::redis::consume(first, source));
    until_taken(&[&first_metrics], "redis", 150).await;
    doomed.abort();
    let _ = doomed.await;
    let left = taken(&[&first_metrics], "redis");
    assert!(left < sent, "killed before the end");

    let second = Ingest::new(store.clone(), SignatureKeys::default());
    let second_metrics = second.metrics().clone();
    let heir = tokio::spawn(portcullis_events::sources::redis::consume(
        second,
        redis_source(&redis, "events", "heir"),
    ));
    let both = [&first_metrics, &second_metrics];
    // The entry in flight when it died may be taken again: a duplicate then.
    until_taken(&both, "redis", sent).await;
    let pending_clear = Instant::now() + Duration::from_secs(30);
    while !redis
        .cli(&["XPENDING", "events", "portcullis"])
        .starts_with('0')
    {
        assert!(Instant::now() < pending_clear, "entries left pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Never more than once; one fewer counted when the kill fell between a take's commit
    // and its count (the heir then finds that event a duplicate). The state shows it was
    // applied.
    let applied = count(&both, "redis", "applied");
    let want = workload.outcomes["applied"];
    assert!(
        applied == want || applied + 1 == want,
        "applied {applied}, want {want}"
    );
    assert_eq!(workload.state(&store).await, workload.expected);
    heir.abort();
}

fn sqs_source(moto: &Moto, url: &str, visibility: i32) -> SqsSource {
    SqsSource {
        queue_url: url.to_owned(),
        region: Some(String::from("us-east-1")),
        endpoint_url: Some(moto.endpoint()),
        batch: 10,
        wait_seconds: 1,
        visibility_timeout_seconds: visibility,
    }
}

async fn send(moto: &Moto, url: &str, bodies: &[String]) {
    let client = moto.client();
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .build()
                    .unwrap()
            })
            .collect();
        let out = client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
    }
}

async fn queue_empty(moto: &Moto, url: &str) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = moto
            .client()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::All)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        let n = |a: A| {
            attrs
                .get(&a)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if n(A::ApproximateNumberOfMessages) + n(A::ApproximateNumberOfMessagesNotVisible) == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "messages left in the queue: {attrs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every fixture (seed 004's as SNS delivers it), then a mix with duplicates and poison:
/// every outcome and the final state as computed; every message deleted once taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_takes_every_kind_with_duplicates_and_poison_and_deletes_them() {
    let (_dir, store, workload) = prepared(4, 30, 400, false).await;
    let moto = Moto::start(free_port());
    let url = moto.create_queue("lifecycle", &[]).await;
    let mut bodies = fixtures();
    let archived = bodies.pop().unwrap();
    bodies.push(common::sns_notification(archived));
    let ingest = Ingest::new(store.clone(), SignatureKeys::default());
    let metrics = ingest.metrics().clone();
    let consumer = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        ingest,
        sqs_source(&moto, &url, 30),
    ));
    // The fixtures build on each other: one at a time, in order.
    for (i, body) in bodies.iter().enumerate() {
        send(&moto, &url, std::slice::from_ref(body)).await;
        until_taken(&[&metrics], "sqs", i as u64 + 1).await;
    }
    send(&moto, &url, &workload.messages).await;
    until_taken(
        &[&metrics],
        "sqs",
        (bodies.len() + workload.messages.len()) as u64,
    )
    .await;
    queue_empty(&moto, &url).await;

    fixtures_took_effect(&store).await;
    assert_outcomes(&[&metrics], "sqs", &workload, true);
    assert_eq!(workload.state(&store).await, workload.expected);
    let letters = all_dead_letters(&store).await;
    assert_eq!(letters.len() as u64, workload.outcomes["dead_lettered"]);
    assert!(
        letters
            .iter()
            .all(|l| l.source == "sqs:lifecycle" && !l.reason.is_empty())
    );
    assert!(
        metrics
            .delay_seconds
            .with_label_values(&["sqs"])
            .get_sample_count()
            > 0,
        "the queue delay is measured"
    );
    consumer.abort();
}

/// A consumer dies mid-batch; what it had received and not deleted comes back once its
/// visibility ends and a new consumer takes it: nothing lost, nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_a_consumer_killed_mid_batch_loses_nothing() {
    let (_dir, store, workload) = prepared(5, 30, 300, false).await;
    let moto = Moto::start(free_port());
    let url = moto.create_queue("lifecycle", &[]).await;
    send(&moto, &url, &workload.messages).await;
    let sent = workload.messages.len() as u64;

    let first = Ingest::new(store.clone(), SignatureKeys::default());
    let first_metrics = first.metrics().clone();
    let doomed = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        first,
        sqs_source(&moto, &url, 2),
    ));
    until_taken(&[&first_metrics], "sqs", 45).await;
    doomed.abort();
    let _ = doomed.await;
    assert!(
        taken(&[&first_metrics], "sqs") < sent,
        "killed before the end"
    );

    let second = Ingest::new(store.clone(), SignatureKeys::default());
    let second_metrics = second.metrics().clone();
    let heir = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        second,
        sqs_source(&moto, &url, 2),
    ));
    let both = [&first_metrics, &second_metrics];
    until_taken(&both, "sqs", sent).await;
    queue_empty(&moto, &url).await;
    // Never more than once; one fewer counted when the kill fell between a take's commit
    // and its count (the heir then finds that event a duplicate). The state shows it was
    // applied.
    let applied = count(&both, "sqs", "applied");
    let want = workload.outcomes["applied"];
    assert!(
        applied == want || applied + 1 == want,
        "applied {applied}, want {want}"
    );
    assert_eq!(workload.state(&store).await, workload.expected);
    heir.abort();
}

/// Other services' audit events from their queue (seed 004's contract, plain and as SNS
/// delivers it) are appended to the ledger as `external` records, chained with the rest,
/// once each; a message that is no audit event is kept as a dead letter naming every
/// problem; every message is deleted once taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_audit_events_are_appended_to_the_ledger_once() {
    use portcullis_events::external_audit::ExternalAudit;
    use portcullis_ledger::query::AuditQuery;
    use portcullis_ledger::writer::{Ledger, LedgerConfig};
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::connect(&portcullis_store::StoreConfig::Sqlite {
        path: dir.path().join("store.db"),
    })
    .await
    .unwrap();
    let audit_dir = dir.path().join("audit");
    let (ledger, _writer) = Ledger::open(LedgerConfig {
        dir: audit_dir.clone(),
        prefix: String::from("audit"),
        max_file_bytes: 1 << 20,
        instance: String::from("audit-source-test"),
        queue_capacity: 64,
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_key: None,
        fsync: true,
        stdout: false,
    })
    .unwrap();
    let moto = Moto::start(free_port());
    let url = moto.create_queue("epr-audit-events", &[]).await;
    let issuer_created = json!({
        "event_id": "6f4e1a2c-cc1b-4f79-b803-b0f7d8b7f02a",
        "source": "issuer-service",
        "action": "issuer.created",
        "actor_id": "b5db2c29-6f2d-4dc6-9b6b-7827806bd0be",
        "actor_type": "user",
        "entity_id": "0f0f7e13-7cb5-449b-9349-0ed8cc5d9b32",
        "entity_type": "issuer",
        "correlation_id": "req-12345",
        "details": {"issuer_code": "ACME"},
        "occurred_at": "2024-04-14T18:03:11.221208Z"
    });
    let role_granted = json!({
        "event_id": "7a0c2d1e-0000-4000-8000-000000000002",
        "source": "entity-permissions-core",
        "action": "role.granted",
        "occurred_at": "2024-04-14T18:04:00+02:00"
    });
    let bodies = [
        issuer_created.to_string(),
        // Redelivered, or published twice: recorded once.
        issuer_created.to_string(),
        common::sns_notification(role_granted.to_string()),
        json!({"event_id": "x", "source": "svc", "occurred_at": "last tuesday", "details": 5})
            .to_string(),
    ];
    let metrics = EventMetrics::new();
    let consumer = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        ExternalAudit::new(store.clone(), Arc::clone(&ledger), metrics.clone()),
        sqs_source(&moto, &url, 30),
    ));
    // One at a time: the duplicate after its original.
    for (n, body) in bodies.iter().enumerate() {
        send(&moto, &url, std::slice::from_ref(body)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::total(&metrics.external_audit, &[]) < n as u64 + 1 {
            assert!(Instant::now() < deadline, "message {n} not taken");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    queue_empty(&moto, &url).await;
    let counted = |outcome: &str| common::total(&metrics.external_audit, &[("outcome", outcome)]);
    assert_eq!(
        (
            counted("recorded"),
            counted("duplicate"),
            counted("dead_lettered")
        ),
        (2, 1, 1)
    );

    let records = ledger
        .query(&AuditQuery {
            kind: Some(portcullis_ledger::RecordKind::External),
            limit: 100,
            scan_limit: 1000,
            ..AuditQuery::default()
        })
        .unwrap()
        .records;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["kind"], "external");
    assert_eq!(
        records[0]["actor"],
        "user:b5db2c29-6f2d-4dc6-9b6b-7827806bd0be"
    );
    assert_eq!(records[0]["action"], "issuer.created");
    assert_eq!(
        records[0]["resource"],
        "issuer:0f0f7e13-7cb5-449b-9349-0ed8cc5d9b32"
    );
    assert_eq!(
        records[0]["after"], issuer_created,
        "the event as published"
    );
    assert_eq!(records[1]["action"], "role.granted");
    assert!(records[1]["actor"].is_null(), "no actor named");
    assert!(
        store
            .external_audit_recorded("7a0c2d1e-0000-4000-8000-000000000002")
            .await
            .unwrap()
    );
    // Chained with the rest of the ledger.
    let (files, _) = portcullis_ledger::verify::ledger_files(&[audit_dir]).unwrap();
    let summary = portcullis_ledger::verify::verify(
        &files,
        &portcullis_ledger::verify::VerifyOptions {
            allow_unsigned_tail: true,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.records, 2);

    let letters = all_dead_letters(&store).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source, "audit-sqs:epr-audit-events");
    for problem in [
        "`action` is missing",
        "`occurred_at`: `last tuesday` is not an RFC 3339 time",
        "`details` is not an object",
    ] {
        assert!(letters[0].reason.contains(problem), "{}", letters[0].reason);
    }
    // Not replayable as a lifecycle event.
    let replayed = Ingest::new(store.clone(), SignatureKeys::default())
        .replay(&letters[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        replayed.outcome,
        portcullis_events::Outcome::DeadLettered { .. }
    ));
    consumer.abort();
}

/// PostgreSQL goes away while both queues hold events: nothing is taken or acknowledged
/// meanwhile (every message stays in its queue, the failures are counted), and once it is
/// back every message is taken and the state is the one computed. The same events come
/// through both queues: whichever source takes one first applies it, the other finds it a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_leaves_the_events_in_both_queues_until_it_is_back() {
    let (db, store) = postgres_store("sources").await;
    let workload = prepared_in(&store, 6, 20, 200, false).await;
    let sent = workload.messages.len() as u64;
    let moto = Moto::start(free_port());
    let url = moto.create_queue("lifecycle", &[]).await;
    let redis = RedisServer::start(free_port());

    db.allow_connections(false).await.unwrap();
    send(&moto, &url, &workload.messages).await;
    xadd(&redis, "events", workload.messages.clone()).await;
    let ingest = Ingest::new(store.clone(), SignatureKeys::default());
    let metrics = ingest.metrics().clone();
    let sqs = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        ingest.clone(),
        sqs_source(&moto, &url, 2),
    ));
    let redis_consumer = tokio::spawn(portcullis_events::sources::redis::consume(
        ingest,
        redis_source(&redis, "events", "solo"),
    ));
    let errors = |kind: &str| metrics.source_errors.with_label_values(&[kind]).get();
    let deadline = Instant::now() + Duration::from_secs(30);
    while errors("sqs") < 2 || errors("redis") < 2 {
        assert!(Instant::now() < deadline, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(taken(&[&metrics], "sqs") + taken(&[&metrics], "redis"), 0);
    let pending = redis.cli(&["XPENDING", "events", "portcullis"]);
    let lag = redis.cli(&["XINFO", "GROUPS", "events"]);
    assert!(
        !pending.starts_with('0') || lag.contains(&sent.to_string()),
        "the entries wait in the stream: {pending} / {lag}"
    );

    db.allow_connections(true).await.unwrap();
    until_taken(&[&metrics], "sqs", sent).await;
    until_taken(&[&metrics], "redis", sent).await;
    queue_empty(&moto, &url).await;
    assert_eq!(workload.state(&store).await, workload.expected);
    // Each event applied once, by whichever source took it first.
    let both =
        |outcome: &str| count(&[&metrics], "sqs", outcome) + count(&[&metrics], "redis", outcome);
    assert_eq!(
        both("applied") + both("stale") + both("acknowledged"),
        sent - workload.outcomes["dead_lettered"] - workload.outcomes["duplicate"],
        "each event taken once"
    );
    sqs.abort();
    redis_consumer.abort();
}

/// A slow batch keeps its messages: while the first event of a batch waits on the
/// database (its write lock held by another transaction for well past the visibility
/// timeout), the consumer renews the visibility of the rest, so a second consumer polling
/// the queue is not handed them; once the lock goes, each is taken once, none a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_a_slow_batch_stays_hidden_from_other_consumers() {
    use sqlx::Connection;
    let (db, store) = postgres_store("slow").await;
    let moto = Moto::start(free_port());
    let url = moto.create_queue("lifecycle", &[]).await;
    let bodies: Vec<String> = (0..10)
        .map(|n| {
            json!({"id": format!("inv-{n}"), "type": "invitation.created",
                "timestamp": "2026-01-06T10:00:00Z"})
            .to_string()
        })
        .collect();
    // Every take waits for the store's write lock, held here.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT revision FROM store_meta WHERE id = 1 FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    send(&moto, &url, &bodies).await;
    let first = Ingest::new(store.clone(), SignatureKeys::default());
    let second = Ingest::new(store.clone(), SignatureKeys::default());
    let metrics = [first.metrics().clone(), second.metrics().clone()];
    let visibility = 2;
    let slow = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        first,
        sqs_source(&moto, &url, visibility),
    ));
    // The first consumer has received the batch before the second starts polling.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other = tokio::spawn(portcullis_events::sources::sqs::consume_with(
        moto.client(),
        second,
        sqs_source(&moto, &url, visibility),
    ));
    // Three visibility timeouts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let both = [&metrics[0], &metrics[1]];
    assert_eq!(
        taken(&both, "sqs"),
        0,
        "nothing taken while the lock is held"
    );
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();

    until_taken(&both, "sqs", 10).await;
    queue_empty(&moto, &url).await;
    assert_eq!(count(&both, "sqs", "acknowledged"), 10);
    assert_eq!(
        count(&both, "sqs", "duplicate"),
        0,
        "no message handed to the second consumer while the first held it"
    );
    slow.abort();
    other.abort();
}
