//! The store test suite, run against every backend: an SQLite file in a temporary directory
//! and a fresh PostgreSQL database (from `PORTCULLIS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Neither backend is ever skipped: a missing
//! PostgreSQL fails the suite.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail the test loudly"
)]

use std::path::PathBuf;

use portcullis_engine::decision::{
    DecisionReason, DecisionRequest, LocalTime, RequestFacts, decide,
};
use portcullis_engine::snapshot::{HeldEntityTypes, Snapshot, SnapshotHandle, SnapshotUpdate};
use portcullis_model::*;
use portcullis_store::StoreError;
use portcullis_store::scratch::ScratchPostgres;
use portcullis_store::{AssignmentFilter, Import, SqlStore, Store, StoreConfig};

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn default_policy_files() -> (Vec<PolicyFile>, String) {
    let dir = policies_dir();
    let text = std::fs::read_to_string(dir.join("default.cedar")).unwrap();
    let schema = std::fs::read_to_string(dir.join("schema.cedarschema")).unwrap();
    (
        vec![PolicyFile {
            name: String::from("default.cedar"),
            text,
        }],
        schema,
    )
}

fn role(name: &str, actions: &[&str]) -> Role {
    Role {
        name: name.to_owned(),
        description: String::new(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        scope_types: vec![],
    }
}

fn user(id: &str, tenant: &str) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        id: id.to_owned(),
        status: PrincipalStatus::Active,
        tenant: Some(tenant.to_owned()),
        groups: vec![],
        attributes: PrincipalAttributes::default(),
        trusted_devices: vec![],
    }
}

fn eref(s: &str) -> EntityRef {
    s.parse().unwrap()
}

fn facts() -> RequestFacts {
    RequestFacts {
        now: 1_800_000_000_000,
        local_time: LocalTime {
            hour: 10,
            minute: 0,
            weekday: 2,
        },
        risk_score: 0,
        mfa: false,
        device_id: None,
        ip: None,
        band: String::from("GREEN"),
        extra: Vec::new(),
    }
}

async fn sqlite_store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::connect(&StoreConfig::Sqlite {
        path: dir.path().join("store.db"),
    })
    .await
    .unwrap();
    (store, dir)
}

/// A fresh database on the PostgreSQL server, dropped by the guard.
async fn postgres_store() -> (SqlStore, ScratchPostgres) {
    let db = ScratchPostgres::create("test")
        .await
        .expect("PostgreSQL must be reachable for the store suite (see .ci/run)");
    let store = SqlStore::connect(&StoreConfig::Postgres {
        url: db.url.clone(),
    })
    .await
    .unwrap();
    assert_eq!(store.backend_name(), "postgres");
    (store, db)
}

/// Concurrent writers (admin API calls, replicas) are serialised: each one commits with its
/// own revision or is refused for a reason, never fails on a database lock.
async fn concurrent_writes_all_commit(store: SqlStore) {
    seed(&store).await;
    let before = store.revision().await.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = format!("concurrent-{i}");
                store.create_role(&role(&name, &["READ"])).await
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for w in writers {
        revisions.push(w.await.unwrap().expect("every concurrent write commits"));
    }
    revisions.sort_unstable();
    let expected: Vec<Revision> = (before + 1..=before + 16).collect();
    assert_eq!(
        revisions, expected,
        "one revision each, no gaps, no repeats"
    );
    assert_eq!(store.list_roles().await.unwrap().len(), 17);
}

/// Followers wake on commits: this process's own at once, and on PostgreSQL another
/// process's through the relayed notifications.
async fn commits_wake_followers(store: SqlStore) {
    seed(&store).await;
    let mut own = store.commits();
    own.borrow_and_update();
    let revision = store.put_principal(&user("alice", "t1")).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), own.changed())
        .await
        .expect("woken by its own commit")
        .unwrap();
    assert_eq!(*own.borrow(), revision);

    let Some(url) = store.postgres_url().map(str::to_owned) else {
        return;
    };
    let before = store.revision().await.unwrap();
    // A second process on the same database: a separate store and pool.
    let peer = SqlStore::connect(&StoreConfig::Postgres { url })
        .await
        .unwrap();
    let relay = tokio::spawn({
        let peer = peer.clone();
        async move { peer.relay_peer_commits().await }
    });
    let mut theirs = peer.commits();
    // The listener needs a moment to subscribe; write until one is heard.
    let heard = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let revision = store.put_principal(&user("bob", "t2")).await.unwrap();
            if tokio::time::timeout(std::time::Duration::from_millis(300), theirs.changed())
                .await
                .is_ok()
            {
                return (revision, *theirs.borrow());
            }
        }
    })
    .await
    .expect("a peer's commit is relayed");
    assert!(heard.1 > before && heard.1 <= heard.0, "{heard:?}");
    relay.abort();
}

/// Assignment lists by principal, role and scope, a page at a time.
async fn assignments_are_listed_by_principal_role_and_scope(store: SqlStore) {
    seed(&store).await;
    store.create_role(&role("viewer", &["READ"])).await.unwrap();
    for who in ["alice", "bob"] {
        store.put_principal(&user(who, "t1")).await.unwrap();
    }
    let grant = |id: &str, who: &str, role: &str, scope: Scope| Assignment {
        id: id.to_owned(),
        principal: eref(&format!("User::\"{who}\"")),
        role: role.to_owned(),
        scope,
        conditions: AssignmentConditions::default(),
        assigned_by: None,
        reason: None,
    };
    for a in [
        grant(
            "a1",
            "alice",
            "member",
            Scope::Entity(eref("Space::\"s1\"")),
        ),
        grant("a2", "alice", "viewer", Scope::Global),
        grant("a3", "bob", "member", Scope::Entity(eref("Space::\"s1\""))),
        grant("a4", "bob", "member", Scope::Entity(eref("Space::\"s2\""))),
    ] {
        store.create_assignment(&a).await.unwrap();
    }
    let ids = |v: Vec<Assignment>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let list = |filter: AssignmentFilter, after: Option<&'static str>, limit: i64| {
        let store = store.clone();
        async move { ids(store.list_assignments(&filter, after, limit).await.unwrap()) }
    };
    assert_eq!(
        list(AssignmentFilter::Principal(eref("User::\"bob\"")), None, 10).await,
        ["a3", "a4"]
    );
    assert_eq!(
        list(AssignmentFilter::Role(String::from("member")), None, 10).await,
        ["a1", "a3", "a4"]
    );
    assert_eq!(
        list(
            AssignmentFilter::Role(String::from("member")),
            Some("a1"),
            1
        )
        .await,
        ["a3"]
    );
    assert_eq!(
        list(
            AssignmentFilter::Scope(Scope::Entity(eref("Space::\"s1\""))),
            None,
            10
        )
        .await,
        ["a1", "a3"]
    );
    assert_eq!(
        list(AssignmentFilter::Scope(Scope::Global), None, 10).await,
        ["a2"]
    );
    assert!(
        list(AssignmentFilter::Role(String::from("nope")), None, 10)
            .await
            .is_empty()
    );
}

/// The shared part of the state: everything but users, services, their assignments and the
/// entities of types not held.
async fn the_shared_state_holds_groups_but_no_users_or_services(store: SqlStore) {
    seed(&store).await;
    let mut team = user("team", "t1");
    team.kind = PrincipalKind::Group;
    let mut svc = user("svc", "t1");
    svc.kind = PrincipalKind::Service;
    for p in [user("alice", "t1"), team, svc] {
        store.put_principal(&p).await.unwrap();
    }
    for (id, who) in [
        ("a1", "User::\"alice\""),
        ("g1", "Group::\"team\""),
        ("s1", "Service::\"svc\""),
    ] {
        store
            .create_assignment(&Assignment {
                id: id.to_owned(),
                principal: eref(who),
                role: String::from("member"),
                scope: Scope::Global,
                conditions: AssignmentConditions::default(),
                assigned_by: None,
                reason: None,
            })
            .await
            .unwrap();
    }
    for (uid, parents) in [
        ("Tenant::\"t1\"", vec![]),
        ("Space::\"s1\"", vec![eref("Tenant::\"t1\"")]),
        ("Space_x::\"s1\"", vec![]),
        ("Document::\"d1\"", vec![eref("Space::\"s1\"")]),
    ] {
        store
            .put_entity(&EntityRecord {
                uid: eref(uid),
                parents,
                attributes: EntityAttributes::default(),
            })
            .await
            .unwrap();
    }
    let full = store.load_state().await.unwrap();
    let shared = store
        .load_shared_state(&HeldEntityTypes::ALL)
        .await
        .unwrap();
    assert_eq!(full.principals.len(), 3);
    assert_eq!(
        shared
            .principals
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["team"]
    );
    assert_eq!(
        shared
            .assignments
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["g1"]
    );
    assert_eq!(shared.revision, full.revision);
    assert_eq!(shared.roles, full.roles);
    assert!(shared.policy_set.is_some());
    // The same as filtering the whole state.
    let filtered = full.shared(&HeldEntityTypes::ALL);
    assert_eq!(shared.principals, filtered.principals);
    assert_eq!(shared.assignments, filtered.assignments);
    assert_eq!(shared.entities.len(), 4);

    // Held entity types: only their entities are read (a type whose name is another's
    // with more after it is not one of them).
    let held = HeldEntityTypes::only(["Tenant", "Space"].map(String::from));
    let shared = store.load_shared_state(&held).await.unwrap();
    let mut uids: Vec<String> = shared.entities.iter().map(|e| e.uid.to_string()).collect();
    uids.sort_unstable();
    assert_eq!(uids, ["Space::\"s1\"", "Tenant::\"t1\""]);
    assert_eq!(shared.held_entity_types, held);
    let mut filtered: Vec<String> = (full.shared(&held).entities.iter())
        .map(|e| e.uid.to_string())
        .collect();
    filtered.sort_unstable();
    assert_eq!(uids, filtered);
}

/// Seeds the default policies and one role, returns the revision.
async fn seed(store: &SqlStore) -> Revision {
    let (files, schema) = default_policy_files();
    store
        .import(&Import {
            roles: vec![role("member", &["READ", "WRITE"])],
            policy_set: Some((files, schema)),
            ..Import::default()
        })
        .await
        .unwrap()
}

async fn revisions_bump_and_changes_are_recorded(store: SqlStore) {
    assert_eq!(store.revision().await.unwrap(), 0);
    let r1 = seed(&store).await;
    assert_eq!(r1, 1);
    let r2 = store.put_principal(&user("alice", "t1")).await.unwrap();
    assert_eq!(r2, 2);
    let changes = store.changes_since(1, 100).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].revision, 2);
    assert_eq!(
        changes[0].kind,
        ChangeKind::Principal {
            principal: eref("User::\"alice\"")
        }
    );
    assert_eq!(
        store.changes_since(0, 100).await.unwrap()[0].kind,
        ChangeKind::Bulk
    );
}

async fn principals_round_trip_and_delete_cascades(store: SqlStore) {
    seed(&store).await;
    let mut alice = user("alice", "t1");
    alice.attributes.clearance = 3;
    alice.attributes.manager = Some(String::from("bob"));
    alice.trusted_devices = vec![String::from("laptop-1")];
    store.put_principal(&alice).await.unwrap();
    let key = alice.entity_ref();
    assert_eq!(
        store.get_principal(&key).await.unwrap(),
        Some(alice.clone())
    );
    store
        .create_assignment(&Assignment {
            id: String::from("a1"),
            principal: key.clone(),
            role: String::from("member"),
            scope: Scope::Entity(eref("Space::\"s1\"")),
            conditions: AssignmentConditions {
                require_mfa: true,
                ..AssignmentConditions::default()
            },
            assigned_by: Some(String::from("admin")),
            reason: Some(String::from("onboarding")),
        })
        .await
        .unwrap();
    assert_eq!(store.assignments_of(&key).await.unwrap().len(), 1);
    let a1 = store.get_assignment("a1").await.unwrap().unwrap();
    assert_eq!(a1.reason.as_deref(), Some("onboarding"));
    assert_eq!(store.get_assignment("a2").await.unwrap(), None);
    let before_deletion = jiff::Timestamp::now().as_millisecond() - 1;
    store.delete_principal(&key).await.unwrap();
    assert_eq!(store.get_assignment("a1").await.unwrap(), None);
    assert_eq!(store.get_principal(&key).await.unwrap(), None);
    assert!(store.assignments_of(&key).await.unwrap().is_empty());
    // A tombstone: its tokens issued until the deletion are revoked, for good.
    let snap = Snapshot::build(store.load_state().await.unwrap(), 0).unwrap();
    assert!(snap.is_token_revoked_for(&key, Some(before_deletion), i64::MAX - 1));
    assert!(!snap.is_token_revoked_for(&eref("User::\"someone-else\""), None, 0));
    assert!(matches!(
        store.delete_principal(&key).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn invalid_writes_are_refused_and_change_nothing(store: SqlStore) {
    seed(&store).await;
    let before = store.revision().await.unwrap();
    // Duplicate role name.
    assert!(matches!(
        store.create_role(&role("member", &["READ"])).await,
        Err(StoreError::Conflict(_))
    ));
    // A role with an action the schema does not know: does not compile.
    match store
        .create_role(&role("broken", &["document.teleport"]))
        .await
    {
        Err(StoreError::Policy(e)) => {
            assert!(e.0[0].message.contains("`document.teleport`"), "{e}");
        }
        other => panic!("expected a policy error, got {other:?}"),
    }
    // An assignment for a principal that does not exist.
    let orphan = Assignment {
        id: String::from("a1"),
        principal: eref("User::\"ghost\""),
        role: String::from("member"),
        scope: Scope::Global,
        conditions: AssignmentConditions::default(),
        assigned_by: None,
        reason: None,
    };
    assert!(matches!(
        store.create_assignment(&orphan).await,
        Err(StoreError::Invalid(_))
    ));
    // An import whose assignment names a role that does not exist.
    let unknown_role = Assignment {
        role: String::from("nope"),
        ..orphan.clone()
    };
    match store
        .import(&Import {
            principals: vec![user("ghost", "t1")],
            assignments: vec![unknown_role],
            ..Import::default()
        })
        .await
    {
        Err(StoreError::Invalid(e)) => assert!(e.to_string().contains("`nope`"), "{e}"),
        other => panic!("expected an invalid import, got {other:?}"),
    }
    // A policy file that does not validate.
    let (_, schema) = default_policy_files();
    let bad = vec![PolicyFile {
        name: String::from("bad.cedar"),
        text: String::from(
            "@id(\"x\")\npermit(principal, action, resource) when { principal.shoe_size > 3 };",
        ),
    }];
    assert!(matches!(
        store
            .put_policy_set(&bad, &schema, Some("tester"), None)
            .await,
        Err(StoreError::Policy(_))
    ));
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "nothing was written"
    );
    assert!(store.changes_since(before, 10).await.unwrap().is_empty());
}

async fn roles_in_use_cannot_be_deleted(store: SqlStore) {
    seed(&store).await;
    store.put_principal(&user("alice", "t1")).await.unwrap();
    store
        .create_assignment(&Assignment {
            id: String::from("a1"),
            principal: eref("User::\"alice\""),
            role: String::from("member"),
            scope: Scope::Global,
            conditions: AssignmentConditions::default(),
            assigned_by: None,
            reason: None,
        })
        .await
        .unwrap();
    assert!(matches!(
        store.delete_role("member").await,
        Err(StoreError::Conflict(_))
    ));
    // Updating keeps the name and refuses unknown roles and uncompilable changes.
    store.update_role(&role("member", &["READ"])).await.unwrap();
    assert_eq!(
        store.list_roles().await.unwrap()[0].actions,
        vec![String::from("READ")]
    );
    assert!(matches!(
        store.update_role(&role("nobody", &["READ"])).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update_role(&role("member", &["space.fly"])).await,
        Err(StoreError::Policy(_))
    ));
    store.delete_assignment("a1").await.unwrap();
    store.delete_role("member").await.unwrap();
    assert!(store.list_roles().await.unwrap().is_empty());
}

/// The follower path: build a snapshot, mutate the store, load the update, patch, decide.
async fn snapshot_follows_changes(store: SqlStore) {
    seed(&store).await;
    store.put_principal(&user("alice", "t1")).await.unwrap();
    store
        .put_entity(&EntityRecord {
            uid: eref("Document::\"d1\""),
            parents: vec![eref("Space::\"s1\"")],
            attributes: EntityAttributes {
                tenant: Some(String::from("t1")),
                ..EntityAttributes::default()
            },
        })
        .await
        .unwrap();
    let stored = store
        .get_entity(&eref("Document::\"d1\""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.parents, [eref("Space::\"s1\"")]);
    assert_eq!(
        store.get_entity(&eref("Space::\"s1\"")).await.unwrap(),
        None
    );
    let handle =
        SnapshotHandle::new(Snapshot::build(store.load_state().await.unwrap(), 0).unwrap());
    let alice = eref("User::\"alice\"");
    let doc = eref("Document::\"d1\"");
    let f = facts();
    let ask = |h: &SnapshotHandle| {
        decide(
            &h.load(),
            &DecisionRequest {
                principal: &alice,
                action: "document.read",
                resource: &doc,
                route_parents: &[],
                facts: &f,
                claimed: None,
            },
        )
    };
    assert_eq!(ask(&handle).reason, DecisionReason::NoPermit);

    let since = handle.load().revision();
    store
        .create_assignment(&Assignment {
            id: String::from("a1"),
            principal: alice.clone(),
            role: String::from("member"),
            scope: Scope::Entity(eref("Space::\"s1\"")),
            conditions: AssignmentConditions::default(),
            assigned_by: None,
            reason: None,
        })
        .await
        .unwrap();
    let update = store.load_update(since).await.unwrap();
    assert!(
        matches!(update, SnapshotUpdate::Patch(_)),
        "a single change is patched"
    );
    handle.apply(update, 1).unwrap();
    let d = ask(&handle);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.determining_policies, vec![String::from("role:member")]);

    // Suspension is seen on the next patch.
    let since = handle.load().revision();
    let mut suspended = user("alice", "t1");
    suspended.status = PrincipalStatus::Suspended;
    store.put_principal(&suspended).await.unwrap();
    handle
        .apply(store.load_update(since).await.unwrap(), 2)
        .unwrap();
    let d = ask(&handle);
    assert!(!d.allowed);
    assert_eq!(
        d.determining_policies,
        vec![String::from("status-not-active")]
    );
    assert_eq!(handle.load().revision(), store.revision().await.unwrap());
}

async fn revoked_sessions_expire(store: SqlStore) {
    seed(&store).await;
    store
        .revoke_session(&RevokedSession {
            session_id: String::from("sid-1"),
            principal: Some(eref("User::\"alice\"")),
            expires_at: 5_000,
            issued_before: None,
        })
        .await
        .unwrap();
    let state = store.load_state().await.unwrap();
    // load_state drops sessions expired in real time; this one expired in 1970.
    assert!(state.revoked_sessions.is_empty());
    store
        .revoke_session(&RevokedSession {
            session_id: String::from("sid-2"),
            principal: None,
            expires_at: i64::MAX,
            issued_before: None,
        })
        .await
        .unwrap();
    let alice = eref("User::\"alice\"");
    let all_of_alice = |issued_before| RevokedSession {
        session_id: RevokedSession::all_sessions_key(&alice),
        principal: Some(alice.clone()),
        expires_at: i64::MAX,
        issued_before: Some(issued_before),
    };
    store.revoke_session(&all_of_alice(10_000)).await.unwrap();
    let snap = Snapshot::build(store.load_state().await.unwrap(), 0).unwrap();
    let bob = eref("User::\"bob\"");
    assert!(
        snap.is_session_revoked(&alice, "sid-2", 1_000),
        "revoked for everyone"
    );
    assert!(
        snap.is_session_revoked(&bob, "sid-2", 1_000),
        "revoked for everyone"
    );
    assert!(!snap.is_session_revoked(&alice, "sid-1", 1_000));
    assert!(snap.is_token_revoked_for(&alice, Some(9_999), 1_000));
    assert!(snap.is_token_revoked_for(&alice, None, 1_000), "no iat");
    assert!(!snap.is_token_revoked_for(&alice, Some(10_000), 1_000));
    assert!(!snap.is_token_revoked_for(&eref("User::\"bob\""), None, 1_000));
    assert!(!snap.is_session_revoked(&alice, &RevokedSession::all_sessions_key(&alice), 1_000));

    // Revoking again moves the cutoff; a follower applying the change sees the same.
    let revision = store.revoke_session(&all_of_alice(20_000)).await.unwrap();
    let state = store.load_state().await.unwrap();
    assert_eq!(state.revoked_sessions.len(), 2, "one record per principal");
    let SnapshotUpdate::Patch(delta) = store.load_update(revision - 1).await.unwrap() else {
        panic!("one revocation is a patch");
    };
    let patched = snap.patched(delta, 1_000).unwrap();
    assert!(patched.is_token_revoked_for(&alice, Some(15_000), 1_000));
    assert!(!patched.is_token_revoked_for(&alice, Some(20_000), 1_000));
}

/// A session revoked for one principal is that principal's: the same id in another
/// principal's token still works, and another principal's revocation of the same id
/// (with another expiry) neither replaces nor shortens the first.
async fn a_revoked_session_belongs_to_its_principal(store: SqlStore) {
    seed(&store).await;
    let alice = eref("User::\"alice\"");
    let bob = eref("User::\"bob\"");
    let revoke = |who: &EntityRef, expires_at| RevokedSession {
        session_id: String::from("shared"),
        principal: Some(who.clone()),
        expires_at,
        issued_before: None,
    };
    store.revoke_session(&revoke(&bob, i64::MAX)).await.unwrap();
    let snap = Snapshot::build(store.load_state().await.unwrap(), 0).unwrap();
    assert!(snap.is_session_revoked(&bob, "shared", 1_000));
    assert!(
        !snap.is_session_revoked(&alice, "shared", 1_000),
        "not alice's"
    );

    // load_state forgets what expired in real time: alice's lasts an hour from now.
    let now = jiff::Timestamp::now().as_millisecond();
    let later = now + 3_600_000;
    let revision = store.revoke_session(&revoke(&alice, later)).await.unwrap();
    let state = store.load_state().await.unwrap();
    assert_eq!(state.revoked_sessions.len(), 2, "one record each");
    let SnapshotUpdate::Patch(delta) = store.load_update(revision - 1).await.unwrap() else {
        panic!("one revocation is a patch");
    };
    for (how, snap) in [
        ("patched", snap.patched(delta, now).unwrap()),
        ("built", Snapshot::build(state, 0).unwrap()),
    ] {
        assert!(snap.is_session_revoked(&alice, "shared", now), "{how}");
        assert!(snap.is_session_revoked(&bob, "shared", now), "{how}");
        assert!(
            !snap.is_session_revoked(&alice, "shared", later),
            "{how}: alice's expired"
        );
        assert!(
            snap.is_session_revoked(&bob, "shared", later),
            "{how}: bob's did not"
        );
    }
}

async fn policy_versions_increase(store: SqlStore) {
    seed(&store).await;
    let (files, schema) = default_policy_files();
    let (_, v2) = store
        .put_policy_set(&files, &schema, Some("alice"), None)
        .await
        .unwrap();
    assert_eq!(v2, 2);
    let current = store.current_policy_set().await.unwrap().unwrap();
    assert_eq!(current.version, 2);
    assert_eq!(current.created_by.as_deref(), Some("alice"));
}

/// `If-Match` semantics, the dry-run check, the history and reading one version.
async fn policy_writes_are_conditional_and_history_is_kept(store: SqlStore) {
    seed(&store).await;
    let (mut files, schema) = default_policy_files();
    let before = store.revision().await.unwrap();

    // A stale version is refused and writes nothing.
    match store
        .put_policy_set(&files, &schema, Some("bob"), Some(7))
        .await
    {
        Err(StoreError::VersionMismatch {
            expected: 7,
            current: Some(1),
        }) => {}
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    assert_eq!(store.revision().await.unwrap(), before);

    // The check compiles without writing; it counts the role policies too.
    let check = store.check_policy_set(&files, &schema).await.unwrap();
    assert!(check.policies > files.len(), "{check:?}");
    assert_eq!(store.revision().await.unwrap(), before);
    files.push(PolicyFile {
        name: String::from("bad.cedar"),
        text: String::from("@id(\"x\")\npermit(principal, action, resource) when { nope };"),
    });
    match store.check_policy_set(&files, &schema).await {
        Err(StoreError::Policy(e)) => assert_eq!(e.0[0].file, "bad.cedar", "{e}"),
        other => panic!("expected a policy error, got {other:?}"),
    }
    files.pop();

    // Two writers expecting the same version: exactly one wins.
    let racers: Vec<_> = ["carol", "dave"]
        .into_iter()
        .map(|who| {
            let (store, files, schema) = (store.clone(), files.clone(), schema.clone());
            tokio::spawn(async move {
                store
                    .put_policy_set(&files, &schema, Some(who), Some(1))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok((_, 2)) => won += 1,
            Err(StoreError::VersionMismatch {
                expected: 1,
                current: Some(2),
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    store
        .put_policy_set(&files, &schema, Some("erin"), Some(2))
        .await
        .unwrap();

    let history = store.policy_set_history(None, 10).await.unwrap();
    let versions: Vec<i64> = history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [3, 2, 1], "newest first");
    assert_eq!(history[0].created_by.as_deref(), Some("erin"));
    assert_eq!(history[2].created_by.as_deref(), Some("import"));
    let older = store.policy_set_history(Some(3), 1).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].version, 2);
    assert_eq!(
        store.policy_set_version(1).await.unwrap().unwrap().files,
        files
    );
    assert_eq!(store.policy_set_version(9).await.unwrap(), None);

    // The policies-directory digest is recorded with the import that stores it.
    assert_eq!(store.policies_dir_digest().await.unwrap(), None);
    store
        .import(&Import {
            policies_dir_digest: Some(String::from("sha256:abc")),
            ..Import::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.policies_dir_digest().await.unwrap().as_deref(),
        Some("sha256:abc")
    );
}

async fn bulk_import_is_one_revision_and_rebuilds(store: SqlStore) {
    seed(&store).await;
    let since = store.revision().await.unwrap();
    let principals: Vec<Principal> = (0..50).map(|i| user(&format!("u{i}"), "t1")).collect();
    let assignments: Vec<Assignment> = (0..1200)
        .map(|i| Assignment {
            id: format!("a{i}"),
            principal: principals[i % 50].entity_ref(),
            role: String::from("member"),
            scope: Scope::Entity(eref(&format!("Space::\"s{i}\""))),
            conditions: AssignmentConditions::default(),
            assigned_by: None,
            reason: None,
        })
        .collect();
    let rev = store
        .import(&Import {
            principals,
            assignments,
            ..Import::default()
        })
        .await
        .unwrap();
    assert_eq!(rev, since + 1);
    match store.load_update(since).await.unwrap() {
        SnapshotUpdate::Rebuild(state) => {
            assert_eq!(state.assignments.len(), 1200);
            let snap = Snapshot::build(state, 0).unwrap();
            assert_eq!(snap.counts().assignments, 1200);
            assert_eq!(snap.counts().principals, 50);
        }
        SnapshotUpdate::Patch(_) => panic!("an import must rebuild"),
    }
}

fn event(id: &str, at: i64, subjects: &[&str]) -> portcullis_model::events::EventRecord {
    portcullis_model::events::EventRecord {
        id: id.to_owned(),
        source: String::from("test"),
        event_type: String::from("TEST"),
        occurred_at: at,
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        data: serde_json::Map::new(),
    }
}

fn member_of(id: &str, who: &str, scope: Scope) -> Assignment {
    Assignment {
        id: id.to_owned(),
        principal: eref(&format!("User::\"{who}\"")),
        role: String::from("member"),
        scope,
        conditions: AssignmentConditions::default(),
        assigned_by: None,
        reason: None,
    }
}

/// An event applies once, whole, and never over a newer one about the same subject.
async fn events_apply_once_whole_and_in_order(store: SqlStore) {
    use portcullis_model::events::EventOutcome;
    use portcullis_store::Op;
    seed(&store).await;
    let u1 = eref("User::\"u1\"");
    let created = store
        .take_event(
            &event("e1", 1_000, &["User::\"u1\""]),
            &[
                Op::PutPrincipal(user("u1", "t1")),
                Op::PutAssignment(member_of("a1", "u1", Scope::Global)),
            ],
        )
        .await
        .unwrap();
    let EventOutcome::Applied { revision } = created else {
        panic!("applied: {created:?}");
    };
    assert_eq!(store.revision().await.unwrap(), revision);
    assert_eq!(store.assignments_of(&u1).await.unwrap().len(), 1);

    // The same id again: nothing.
    let again = store
        .take_event(
            &event("e1", 1_000, &["User::\"u1\""]),
            &[Op::DeletePrincipal(u1.clone())],
        )
        .await
        .unwrap();
    assert_eq!(again, EventOutcome::Duplicate);
    assert!(store.get_principal(&u1).await.unwrap().is_some());
    assert_eq!(store.revision().await.unwrap(), revision);

    // Older than what u1 last heard: stale, and a duplicate when redelivered.
    let suspend = Op::SetStatus {
        principal: u1.clone(),
        status: PrincipalStatus::Suspended,
    };
    let old = event("e0", 500, &["User::\"u1\""]);
    assert_eq!(
        store
            .take_event(&old, std::slice::from_ref(&suspend))
            .await
            .unwrap(),
        EventOutcome::Stale
    );
    assert_eq!(
        store
            .take_event(&old, std::slice::from_ref(&suspend))
            .await
            .unwrap(),
        EventOutcome::Duplicate
    );
    let status = |store: SqlStore| async move {
        store
            .get_principal(&eref("User::\"u1\""))
            .await
            .unwrap()
            .unwrap()
            .status
    };
    assert_eq!(status(store.clone()).await, PrincipalStatus::Active);
    // Newer: applied.
    assert!(matches!(
        store
            .take_event(&event("e2", 2_000, &["User::\"u1\""]), &[suspend])
            .await
            .unwrap(),
        EventOutcome::Applied { .. }
    ));
    assert_eq!(status(store.clone()).await, PrincipalStatus::Suspended);

    // A change the store refuses refuses the whole event, and records nothing: the same
    // id applies once the cause is fixed.
    let u2_event = event("e3", 3_000, &["User::\"u2\""]);
    let bad = [
        Op::PutPrincipal(user("u2", "t1")),
        Op::PutAssignment(Assignment {
            role: String::from("no-such-role"),
            ..member_of("a2", "u2", Scope::Global)
        }),
    ];
    let before = store.revision().await.unwrap();
    assert!(matches!(
        store.take_event(&u2_event, &bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        store
            .get_principal(&eref("User::\"u2\""))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.revision().await.unwrap(), before);
    let good = [
        Op::PutPrincipal(user("u2", "t1")),
        Op::PutAssignment(member_of("a2", "u2", Scope::Entity(eref("Tenant::\"t1\"")))),
        Op::JoinGroups {
            principal: eref("User::\"u2\""),
            groups: vec![String::from("ops"), String::from("ops")],
        },
    ];
    assert!(matches!(
        store.take_event(&u2_event, &good).await.unwrap(),
        EventOutcome::Applied { .. }
    ));
    let u2 = store
        .get_principal(&eref("User::\"u2\""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u2.groups, vec![String::from("ops")]);

    // No ops: acknowledged, no revision.
    let before = store.revision().await.unwrap();
    assert_eq!(
        store
            .take_event(&event("e4", 4_000, &[]), &[])
            .await
            .unwrap(),
        EventOutcome::Acknowledged
    );
    assert_eq!(store.revision().await.unwrap(), before);

    // Scoped removal takes only that scope's assignments; deleting twice is fine.
    store
        .take_event(
            &event("e5", 5_000, &["User::\"u2\""]),
            &[
                Op::PutAssignment(member_of("a3", "u2", Scope::Global)),
                Op::DeleteAssignments {
                    principal: eref("User::\"u2\""),
                    scope: Some(Scope::Entity(eref("Tenant::\"t1\""))),
                },
            ],
        )
        .await
        .unwrap();
    let left: Vec<String> = store
        .assignments_of(&eref("User::\"u2\""))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(left, vec![String::from("a3")]);
    for id in ["e6", "e7"] {
        store
            .take_event(
                &event(id, 6_000, &["User::\"u2\""]),
                &[Op::DeletePrincipal(eref("User::\"u2\""))],
            )
            .await
            .unwrap();
    }
    assert!(
        store
            .get_principal(&eref("User::\"u2\""))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .assignments_of(&eref("User::\"u2\""))
            .await
            .unwrap()
            .is_empty()
    );

    // Archiving needs the entity.
    assert!(matches!(
        store
            .take_event(
                &event("e8", 7_000, &[]),
                &[Op::Archive(eref("Space::\"nope\""))]
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    store
        .put_entity(&EntityRecord {
            uid: eref("Space::\"s1\""),
            parents: vec![],
            attributes: EntityAttributes::default(),
        })
        .await
        .unwrap();
    store
        .take_event(
            &event("e8", 7_000, &[]),
            &[Op::Archive(eref("Space::\"s1\""))],
        )
        .await
        .unwrap();
    assert!(
        store
            .get_entity(&eref("Space::\"s1\""))
            .await
            .unwrap()
            .unwrap()
            .attributes
            .archived
    );
}

/// Dead letters are kept whole, listed in order, and marked when replayed.
async fn dead_letters_are_kept_listed_and_marked(store: SqlStore) {
    use portcullis_model::events::DeadLetter;
    for (id, reason) in [("d1", "bad JSON"), ("d2", "unknown type `x`")] {
        store
            .add_dead_letter(&DeadLetter {
                id: id.to_owned(),
                event_id: (id == "d2").then(|| String::from("e9")),
                source: String::from("test"),
                received_at: 1_000,
                reason: reason.to_owned(),
                body: format!("{{\"n\":\"{id}\"}}"),
                replayed_at: None,
            })
            .await
            .unwrap();
    }
    let all = store.dead_letters(None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["d1", "d2"]
    );
    assert_eq!(all[1].event_id.as_deref(), Some("e9"));
    assert_eq!(all[1].body, "{\"n\":\"d2\"}");
    let after = store.dead_letters(Some("d1"), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    store.mark_replayed("d2").await.unwrap();
    assert!(
        store
            .dead_letter("d2")
            .await
            .unwrap()
            .unwrap()
            .replayed_at
            .is_some()
    );
    assert!(matches!(
        store.mark_replayed("d3").await,
        Err(StoreError::NotFound(_))
    ));
}

/// The live event stream: an entry per event taken (not per duplicate) and per dead letter,
/// numbered 1, 2, 3… in commit order even when writers race.
async fn the_event_stream_numbers_entries_without_gaps(store: SqlStore) {
    use portcullis_model::events::DeadLetter;
    assert_eq!(store.event_stream_head().await.unwrap(), 0);
    let mut writers = Vec::new();
    for n in 0..30_i64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            if n % 3 == 0 {
                store
                    .add_dead_letter(&DeadLetter {
                        id: format!("d{n}"),
                        event_id: None,
                        source: String::from("test"),
                        received_at: n,
                        reason: String::from("bad JSON"),
                        body: String::from("{"),
                        replayed_at: None,
                    })
                    .await
                    .unwrap();
            } else {
                let mut taken = event(&format!("e{n}"), n, &[]);
                taken.event_type = String::from("invitation.created");
                store.take_event(&taken, &[]).await.unwrap();
                // Again: a duplicate, no entry.
                store.take_event(&taken, &[]).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let entries = store.event_stream(0, 100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(store.event_stream_head().await.unwrap(), 30);
    let mut named: Vec<String> = entries
        .iter()
        .map(|e| {
            let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            match e.name.as_str() {
                "dead_letter" => data["dead_letter"].as_str().unwrap().to_owned(),
                "invitation.created" => {
                    assert_eq!(data["outcome"], "acknowledged");
                    data["event_id"].as_str().unwrap().to_owned()
                }
                other => panic!("entry named {other}"),
            }
        })
        .collect();
    named.sort_unstable();
    let mut expected: Vec<String> = (0..30)
        .map(|n| format!("{}{n}", if n % 3 == 0 { "d" } else { "e" }))
        .collect();
    expected.sort_unstable();
    assert_eq!(named, expected, "each once");
    let page = store.event_stream(28, 100).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [29, 30]);
    assert_eq!(store.event_stream(10, 5).await.unwrap().len(), 5);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = super::sqlite_store().await;
                    assert_eq!(store.backend_name(), "sqlite");
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _db) = super::postgres_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

suite!(
    revisions_bump_and_changes_are_recorded,
    principals_round_trip_and_delete_cascades,
    invalid_writes_are_refused_and_change_nothing,
    roles_in_use_cannot_be_deleted,
    snapshot_follows_changes,
    revoked_sessions_expire,
    a_revoked_session_belongs_to_its_principal,
    policy_versions_increase,
    policy_writes_are_conditional_and_history_is_kept,
    bulk_import_is_one_revision_and_rebuilds,
    concurrent_writes_all_commit,
    commits_wake_followers,
    assignments_are_listed_by_principal_role_and_scope,
    events_apply_once_whole_and_in_order,
    dead_letters_are_kept_listed_and_marked,
    the_event_stream_numbers_entries_without_gaps,
    the_shared_state_holds_groups_but_no_users_or_services,
);

/// A store made before sqlx's migrator (which knew migrations 1 and 2): their schema, its
/// applied versions in `schema_migrations` instead of `_sqlx_migrations`. Made from a
/// store of today's code, turned back into what the earlier code left.
async fn make_old_layout(url: &str, versions: &[i64]) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    for table in [
        "_sqlx_migrations",
        "dead_letters",
        "event_subjects",
        "events_taken",
        "event_stream",
        "external_audit_recorded",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&pool)
            .await
            .unwrap();
    }
    // Migration 4's column of a table migration 1 made.
    sqlx::query("ALTER TABLE store_meta DROP COLUMN event_seq")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    for v in versions {
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(*v)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

/// Whether the old migration table exists, and the versions sqlx's table records as
/// applied successfully (`None`: no such table).
async fn migration_tables(url: &str) -> (bool, Option<Vec<i64>>) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let old = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&pool)
        .await
        .is_ok();
    let new = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&pool)
        .await
        .ok()
        .map(|rows| {
            use sqlx::Row;
            rows.iter()
                .map(|r| r.try_get::<i64, _>("version").unwrap())
                .collect()
        });
    pool.close().await;
    (old, new)
}

/// An existing store keeps its data when sqlx's migrator takes over its record of applied
/// migrations, once; a store with a migration this binary lacks is refused untouched.
async fn migrations_of_an_earlier_store_are_adopted(config: StoreConfig, url: &str) {
    let store = SqlStore::connect(&config).await.unwrap();
    seed(&store).await;
    store.put_principal(&user("alice", "t1")).await.unwrap();
    drop(store);
    make_old_layout(url, &[1, 2]).await;
    assert_eq!(migration_tables(url).await, (true, None));

    let store = SqlStore::connect(&config).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 2, "the data is kept");
    assert_eq!(
        migration_tables(url).await,
        (false, Some(vec![1, 2, 3, 4, 5])),
        "1 and 2 adopted, the rest applied"
    );
    drop(store);
    // Again: nothing to adopt, and sqlx's checksums match the recorded ones (it refuses a
    // mismatch).
    let store = SqlStore::connect(&config).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 2);
    drop(store);

    make_old_layout(url, &[1, 2, 99]).await;
    match SqlStore::connect(&config).await {
        Err(StoreError::NewerStore(99)) => {}
        other => panic!("a store from a newer version must be refused, got {other:?}"),
    }
    assert_eq!(
        migration_tables(url).await,
        (true, None),
        "nothing half-written"
    );
}

#[tokio::test]
async fn sqlite_migrations_of_an_earlier_store_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let url = format!("sqlite://{}", path.display());
    migrations_of_an_earlier_store_are_adopted(StoreConfig::Sqlite { path }, &url).await;
}

#[tokio::test]
async fn postgres_migrations_of_an_earlier_store_are_adopted() {
    let db = ScratchPostgres::create("migrate")
        .await
        .expect("PostgreSQL must be reachable for the store suite (see .ci/run)");
    let config = StoreConfig::Postgres {
        url: db.url.clone(),
    };
    migrations_of_an_earlier_store_are_adopted(config, &db.url).await;
}
