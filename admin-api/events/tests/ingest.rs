//! The ingestion path against a real store (an SQLite file, and a scratch PostgreSQL
//! database): every event type of the seed fixtures, duplicates, reordering, each kind of
//! poison message, signatures, and replay of a dead letter.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail the test loudly"
)]

use std::collections::HashMap;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use portcullis_events::envelope::SignatureKeys;
use portcullis_events::{Ingest, Outcome};
use portcullis_model::events::EventOutcome;
use portcullis_model::*;
use portcullis_store::{SqlStore, Store};
use serde_json::{Value, json};
use sha2::Digest;

mod common;
use common::{fixture, role, seed};

fn user(id: &str) -> EntityRef {
    principal_ref(PrincipalKind::User, id)
}

const DANA: &str = "7f3a2c10-5b1e-4d2a-9c11-0a6f3e2d9b01";
const MEMBER: &str = "user_90123456-4567-4567-4567-456789012jkl";

fn outcome(o: &Outcome) -> &'static str {
    o.as_str()
}

fn reason(o: &Outcome) -> &str {
    match o {
        Outcome::DeadLettered { reason, .. } => reason,
        Outcome::Taken(t) => panic!("expected a dead letter, got {t:?}"),
    }
}

async fn every_seed_event_applies_once_in_order(store: SqlStore) {
    seed(&store).await;
    let ingest = Ingest::new(store.clone(), SignatureKeys::default());
    let counted = ingest.metrics().taken.clone();
    let take = |name: &'static str| {
        let ingest = ingest.clone();
        async move { ingest.take("test", fixture(name).as_bytes()).await.unwrap() }
    };

    // Seed 000.
    let created = take("000_user_created.json").await;
    assert_eq!(outcome(&created.outcome), "applied", "{created:?}");
    assert_eq!(created.event_type.as_deref(), Some("USER_CREATED"));
    let dana = store.get_principal(&user(DANA)).await.unwrap().unwrap();
    assert_eq!(dana.status, PrincipalStatus::Active);
    let grants = store.assignments_of(&user(DANA)).await.unwrap();
    assert_eq!(grants.len(), 2, "{grants:?}");
    for a in &grants {
        assert_eq!(a.role, "member");
        assert!(a.conditions.require_mfa, "mfa_required");
        assert_eq!(
            a.conditions.allowed_bands,
            ["GREEN", "AMBER"],
            "trust_level amber"
        );
    }
    assert!(grants.iter().any(|a| a.scope == Scope::Global));
    assert!(
        grants
            .iter()
            .any(|a| a.scope == Scope::Entity("Space::\"shared:household\"".parse().unwrap()))
    );
    assert_eq!(
        outcome(&take("000_user_created.json").await.outcome),
        "duplicate"
    );

    let assigned = take("000_user_role_assigned.json").await;
    assert_eq!(outcome(&assigned.outcome), "applied");
    let a = store
        .get_assignment("01JGZ5Q8W3V2K7N4M6P9R1T0XA")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.role, "guardian");
    assert!(a.conditions.require_mfa);
    assert_eq!(a.conditions.valid_until, Some(1_770_336_000_000));

    let granted = take("000_user_space_access_granted.json").await;
    assert_eq!(outcome(&granted.outcome), "applied");
    let g = store
        .get_assignment("01JGZ5RA1B2C3D4E5F6G7H8J9K")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.role, "guest", "the one role granting exactly READ");
    assert_eq!(g.conditions.allowed_bands, ["GREEN"]);
    assert!(g.conditions.require_trusted_device, "device restrictions");
    // The role changes; a redelivery is still a duplicate, not a dead letter because its
    // permissions no longer match a role.
    store
        .update_role(&role("guest", &["READ", "document.create"]))
        .await
        .unwrap();
    assert_eq!(
        outcome(&take("000_user_space_access_granted.json").await.outcome),
        "duplicate"
    );

    assert_eq!(
        outcome(&take("000_user_status_changed.json").await.outcome),
        "applied"
    );
    let status = || async {
        store
            .get_principal(&user(DANA))
            .await
            .unwrap()
            .unwrap()
            .status
    };
    assert_eq!(status().await, PrincipalStatus::Suspended);
    // A reactivation that happened before the suspension arrives late: stale.
    let late: Value = json!({
        "topic": "USER_STATUS_CHANGED@1.0",
        "id": "late-reactivation",
        "payload": {"user_id": DANA, "new_status": "active", "changed_ts": "2026-01-06T09:30:00Z"}
    });
    let r = ingest
        .take("test", late.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(outcome(&r.outcome), "stale");
    assert_eq!(status().await, PrincipalStatus::Suspended);

    // Seed 001.
    let m = user(MEMBER);
    let tenant = Scope::Entity(
        "Tenant::\"tenant_78901234-3456-3456-3456-345678901ghi\""
            .parse()
            .unwrap(),
    );
    let tenant_roles = || async {
        store
            .assignments_of(&m)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.scope == tenant)
            .map(|a| a.role)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcome(&take("001_tenant_member_joined.json").await.outcome),
        "applied"
    );
    let member = store.get_principal(&m).await.unwrap().unwrap();
    assert_eq!(
        member.tenant.as_deref(),
        Some("tenant_78901234-3456-3456-3456-345678901ghi")
    );
    assert_eq!(tenant_roles().await, ["member"]);
    assert_eq!(
        outcome(&take("001_tenant_member_role_changed.json").await.outcome),
        "applied"
    );
    assert_eq!(tenant_roles().await, ["admin"], "replaced, not added");
    assert_eq!(
        outcome(&take("001_invitation_created.json").await.outcome),
        "acknowledged"
    );
    assert_eq!(
        outcome(&take("001_team_members_added.json").await.outcome),
        "applied"
    );
    assert_eq!(
        store.get_principal(&m).await.unwrap().unwrap().groups,
        ["team_ops"]
    );
    assert_eq!(
        outcome(&take("001_user_session_revoked.json").await.outcome),
        "applied"
    );
    let state = store.load_state().await.unwrap();
    assert!(
        state
            .revoked_sessions
            .iter()
            .any(|s| s.session_id == "sess_0a1b2c3d" && s.principal.as_ref() == Some(&m))
    );
    assert_eq!(
        outcome(&take("001_tenant_member_removed.json").await.outcome),
        "applied"
    );
    assert!(tenant_roles().await.is_empty());

    // Seed 004, as SNS delivers it to SQS.
    let sns = common::sns_notification(fixture("004_entity_archived.json"));
    let r = ingest.take("test", sns.as_bytes()).await.unwrap();
    assert_eq!(outcome(&r.outcome), "applied", "{r:?}");
    assert!(common::issuer_archived(&store).await);

    // user.deactivated / reactivated / deleted.
    for (id, kind, at) in [
        ("evt_d1", "user.deactivated", "2025-01-23T10:00:00Z"),
        ("evt_d2", "user.reactivated", "2025-01-23T11:00:00Z"),
    ] {
        let e = json!({"id": id, "type": kind, "timestamp": at, "userId": MEMBER, "data": {}});
        let r = ingest.take("test", e.to_string().as_bytes()).await.unwrap();
        assert_eq!(outcome(&r.outcome), "applied", "{kind}");
    }
    assert_eq!(
        store.get_principal(&m).await.unwrap().unwrap().status,
        PrincipalStatus::Active
    );
    let deleted = json!({"id": "evt_d3", "type": "user.deleted", "timestamp": "2025-01-24T10:00:00Z", "data": {"userId": MEMBER}});
    let r = ingest
        .take("test", deleted.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(outcome(&r.outcome), "applied");
    assert!(store.get_principal(&m).await.unwrap().is_none());
    assert!(store.assignments_of(&m).await.unwrap().is_empty());
    // Counted by kind of source, type and outcome.
    let count =
        |outcome: &str| common::total(&counted, &[("source", "test"), ("outcome", outcome)]);
    assert_eq!(
        counted
            .with_label_values(&["test", "user.deleted", "applied"])
            .get(),
        1
    );
    assert_eq!(count("duplicate"), 2);
    assert_eq!(count("stale"), 1);
    assert_eq!(count("acknowledged"), 1);
    assert_eq!(count("dead_lettered"), 0);
}

async fn poison_is_kept_with_its_reason_and_replayed_after_a_fix(store: SqlStore) {
    seed(&store).await;
    let ingest = Ingest::new(store.clone(), SignatureKeys::default());
    let before = store.revision().await.unwrap();
    let cases: [(&[u8], &str); 7] = [
        (b"{not json", "not JSON"),
        (br#"[1, 2]"#, "not a JSON object"),
        (br#"{"hello": 1}"#, "no envelope"),
        (
            br#"{"id": "", "type": 7, "timestamp": "yesterday"}"#,
            "`id` is empty; `type` is not a string; `timestamp`: `yesterday` is not an RFC 3339 time",
        ),
        (
            br#"{"id": "e-x", "type": "user.teleported", "timestamp": "2025-01-22T10:00:00Z", "data": {}}"#,
            "unknown event type `user.teleported`",
        ),
        (
            // A type is a name: it becomes an SSE event name and a log field as it is.
            br#"{"id": "e-n", "type": "invitation.sent\nevent: USER_CREATED", "timestamp": "2025-01-22T10:00:00Z"}"#,
            "`type`: `invitation.sent\\nevent: USER_CREATED` is not an event type",
        ),
        (
            br#"{"topic": "USER_SPACE_ACCESS_GRANTED@1.0", "payload": {"assignment_id": "x1", "user_id": "u", "space_id": "s", "permissions": ["READ"], "role_context": "guardian", "assigned_ts": "2026-01-06T09:06:00Z"}}"#,
            "are not what role `guardian` grants",
        ),
    ];
    for (body, expected) in cases {
        let r = ingest.take("test", body).await.unwrap();
        assert!(
            reason(&r.outcome).contains(expected),
            "{:?}: {:?}",
            String::from_utf8_lossy(body),
            r.outcome
        );
    }
    assert_eq!(store.revision().await.unwrap(), before, "nothing changed");
    let letters = store.dead_letters(None, 100).await.unwrap();
    assert_eq!(letters.len(), 7);
    assert_eq!(letters[0].body, "{not json", "kept as received");

    // A role that does not exist yet: dead letter; created; replayed: applied once.
    let created = json!({"topic": "USER_CREATED@1.0", "id": "ev-ops", "payload": {
        "user_id": "olga", "initial_role": "operator", "created_ts": "2026-01-06T09:00:00Z"}});
    let r = ingest
        .take("test", created.to_string().as_bytes())
        .await
        .unwrap();
    assert!(reason(&r.outcome).contains("role `operator` does not exist"));
    assert!(
        store.get_principal(&user("olga")).await.unwrap().is_none(),
        "whole or nothing"
    );
    let Outcome::DeadLettered { dead_letter, .. } = r.outcome else {
        unreachable!()
    };
    store
        .create_role(&role("operator", &["READ"]))
        .await
        .unwrap();
    let replayed = ingest.replay(&dead_letter).await.unwrap().unwrap();
    assert!(matches!(
        replayed.outcome,
        Outcome::Taken(EventOutcome::Applied { .. })
    ));
    assert!(store.get_principal(&user("olga")).await.unwrap().is_some());
    assert!(
        store
            .dead_letter(&dead_letter)
            .await
            .unwrap()
            .unwrap()
            .replayed_at
            .is_some()
    );
    let again = ingest.replay(&dead_letter).await.unwrap().unwrap();
    assert_eq!(again.outcome, Outcome::Taken(EventOutcome::Duplicate));
    assert!(ingest.replay("no-such-letter").await.unwrap().is_none());
}

/// With keys configured, a seed-000 event must carry an Ed25519 signature over the SHA-256
/// of its payload's bytes that verifies.
async fn signatures_are_required_and_checked_when_keys_are_configured(store: SqlStore) {
    seed(&store).await;
    let key = SigningKey::from_bytes(&[7; 32]);
    let keys = SignatureKeys::new(HashMap::from([(String::from("k1"), key.verifying_key())]));
    let ingest = Ingest::new(store.clone(), keys);
    let payload = r#"{"user_id":"sig-user","created_ts":"2026-01-06T09:00:00Z"}"#;
    let sign = |payload: &str| {
        let digest = sha2::Sha256::digest(payload.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(key.sign(&digest).to_bytes())
    };
    let message = |payload: &str, signature: Option<String>| {
        let signature = signature
            .map(|v| format!(r#","signature":{{"key_id":"k1","value":"{v}"}}"#))
            .unwrap_or_default();
        format!(r#"{{"topic":"USER_CREATED@1.0","payload":{payload}{signature}}}"#)
    };
    let r = ingest
        .take("test", message(payload, None).as_bytes())
        .await
        .unwrap();
    assert!(reason(&r.outcome).contains("`signature` is missing"));
    let tampered = payload.replace("sig-user", "sig-admin");
    let r = ingest
        .take("test", message(&tampered, Some(sign(payload))).as_bytes())
        .await
        .unwrap();
    assert!(reason(&r.outcome).contains("does not verify"), "{r:?}");
    let r = ingest
        .take("test", message(payload, Some(sign(payload))).as_bytes())
        .await
        .unwrap();
    assert_eq!(outcome(&r.outcome), "applied", "{r:?}");
    assert!(
        r.event_id.as_deref().unwrap().starts_with("sha256:"),
        "no id: the payload's digest"
    );
    assert!(
        store
            .get_principal(&user("sig-user"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get_principal(&user("sig-admin"))
            .await
            .unwrap()
            .is_none()
    );
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = portcullis_store::SqlStore::connect(&portcullis_store::StoreConfig::Sqlite {
                        path: dir.path().join("store.db"),
                    })
                    .await
                    .unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = portcullis_store::scratch::ScratchPostgres::create("events")
                        .await
                        .expect("PostgreSQL must be reachable (see tests/setup)");
                    let store = portcullis_store::SqlStore::connect(&portcullis_store::StoreConfig::Postgres {
                        url: db.url.clone(),
                    })
                    .await
                    .unwrap();
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    every_seed_event_applies_once_in_order,
    poison_is_kept_with_its_reason_and_replayed_after_a_fix,
    signatures_are_required_and_checked_when_keys_are_configured,
);

/// Each change an event makes is in the audit ledger first, with the event as the actor; a
/// redelivery is recorded as not made.
#[tokio::test]
async fn changes_are_recorded_in_the_ledger_with_the_event_as_actor() {
    use portcullis_ledger::query::AuditQuery;
    use portcullis_ledger::writer::{Ledger, LedgerConfig};
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::connect(&portcullis_store::StoreConfig::Sqlite {
        path: dir.path().join("store.db"),
    })
    .await
    .unwrap();
    seed(&store).await;
    let (ledger, _writer) = Ledger::open(LedgerConfig {
        dir: dir.path().join("audit"),
        prefix: String::from("audit"),
        max_file_bytes: 1 << 20,
        instance: String::from("events-test"),
        queue_capacity: 64,
        checkpoint_every: 1000,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        checkpoint_key: None,
        fsync: false,
        stdout: false,
    })
    .unwrap();
    let ingest = Ingest::new(store.clone(), SignatureKeys::default()).recording_in(ledger.clone());
    for _ in 0..2 {
        ingest
            .take(
                "sqs:users",
                fixture("000_user_status_changed.json").as_bytes(),
            )
            .await
            .unwrap();
    }
    // The user did not exist: refused by the store, recorded as not made.
    let actor = |r: &Value| r["actor"].as_str().unwrap_or_default().to_owned();
    let wait = std::time::Instant::now();
    let records = loop {
        let page = ledger
            .query(&AuditQuery {
                limit: 100,
                scan_limit: 1000,
                ..AuditQuery::default()
            })
            .unwrap();
        if page.records.len() >= 3 || wait.elapsed() > std::time::Duration::from_secs(5) {
            break page.records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(records.len() >= 3, "{records:?}");
    assert!(actor(&records[0]).starts_with("event:sqs:users/sha256:"));
    assert_eq!(records[0]["action"], "event.USER_STATUS_CHANGED");
    assert!(
        records[0]["reason"].is_null(),
        "the intent, before the change"
    );
    assert!(
        records[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not made: principal"),
        "{records:?}"
    );
}
