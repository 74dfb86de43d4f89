//! Decision-core benchmarks.
//!
//! `cargo bench -p portcullis-policy-store --bench decide`
//!
//! - `decide/default`: the shipped policies and roles, a typical principal with five
//!   assignments, reading a document two levels below a space grant.
//! - `decide/heavy`: the same request with 10,000 extra policies spread over 100 extra
//!   actions, 1,000 per-principal template links and 1,000,000 assignments in the snapshot.
//! - `snapshot/build_1m`: building the heavy snapshot from an in-memory state (compile,
//!   index, 1,000,000 assignments); its RSS growth is printed once.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_policy_store::decision::{DecisionRequest, LocalTime, RequestFacts, decide};
use portcullis_policy_store::model::{
    Assignment, AssignmentConditions, EntityAttributes, EntityRecord, EntityRef, PolicyFile,
    PolicySetVersion, Principal, PrincipalAttributes, PrincipalKind, PrincipalStatus, Role, Scope,
    TemplateLink,
};
use portcullis_policy_store::snapshot::{Snapshot, StoreState};

const EXTRA_POLICIES: usize = 10_000;
const EXTRA_ACTIONS: usize = 100;
const TEMPLATE_LINKS: usize = 1_000;
const ASSIGNMENTS: usize = 1_000_000;
const USERS: usize = 100_000;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())))
}

#[expect(clippy::panic, reason = "a benchmark without its inputs cannot run")]
fn fail(message: &str) -> ! {
    panic!("{message}")
}

fn eref(type_name: &str, id: &str) -> EntityRef {
    EntityRef::new(type_name, id).unwrap_or_else(|e| fail(&e.to_string()))
}

/// Three of the shipped roles, as in `policies/roles.yaml`.
fn roles() -> Vec<Role> {
    let role = |name: &str, actions: &[&str], scope: &[&str]| Role {
        name: name.to_owned(),
        description: String::new(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        scope_types: scope.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        role(
            "member",
            &["READ", "WRITE", "SHARE"],
            &["Tenant", "Space", "Document"],
        ),
        role("guest", &["READ"], &["Space", "Document"]),
        role(
            "guardian",
            &["READ", "WRITE", "SHARE", "ADMIN"],
            &["Tenant", "Space", "Document"],
        ),
    ]
}

fn user(id: &str) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        id: id.to_owned(),
        status: PrincipalStatus::Active,
        tenant: Some(String::from("t1")),
        groups: vec![],
        attributes: PrincipalAttributes {
            clearance: 2,
            ..PrincipalAttributes::default()
        },
        trusted_devices: vec![String::from("laptop-1")],
    }
}

fn assignment(id: String, principal: EntityRef, role: &str, scope: Scope) -> Assignment {
    Assignment {
        id,
        principal,
        role: role.to_owned(),
        scope,
        conditions: AssignmentConditions::default(),
        assigned_by: None,
        reason: None,
    }
}

/// The shipped policies and alice with five assignments.
fn default_state() -> StoreState {
    let alice = eref("User", "alice");
    let assignments = vec![
        assignment(
            String::from("a1"),
            alice.clone(),
            "member",
            Scope::Entity(eref("Space", "s1")),
        ),
        assignment(
            String::from("a2"),
            alice.clone(),
            "guest",
            Scope::Entity(eref("Space", "s2")),
        ),
        assignment(
            String::from("a3"),
            alice.clone(),
            "guest",
            Scope::Entity(eref("Document", "d7")),
        ),
        assignment(
            String::from("a4"),
            alice.clone(),
            "guardian",
            Scope::Entity(eref("Space", "s3")),
        ),
        assignment(
            String::from("a5"),
            alice,
            "member",
            Scope::Entity(eref("Space", "s4")),
        ),
    ];
    let entities = vec![
        EntityRecord {
            uid: eref("Tenant", "t1"),
            parents: vec![],
            attributes: EntityAttributes::default(),
        },
        EntityRecord {
            uid: eref("Space", "s1"),
            parents: vec![eref("Tenant", "t1")],
            attributes: EntityAttributes::default(),
        },
        EntityRecord {
            uid: eref("Document", "d1"),
            parents: vec![eref("Space", "s1")],
            attributes: EntityAttributes {
                classification: Some(1),
                ..EntityAttributes::default()
            },
        },
    ];
    StoreState {
        revision: 1,
        principals: vec![user("alice")],
        roles: roles(),
        assignments,
        entities,
        revoked_sessions: vec![],
        template_links: vec![],
        policy_set: Some(PolicySetVersion {
            version: 1,
            files: vec![PolicyFile {
                name: String::from("default.cedar"),
                text: read("default.cedar"),
            }],
            schema: read("schema.cedarschema"),
            created_by: None,
            created_at: 0,
        }),
    }
}

/// The default state plus 10,000 policies over 100 actions, 1,000 template links, 100,000
/// users and 1,000,000 assignments.
fn heavy_state() -> StoreState {
    let mut state = default_state();
    let Some(version) = state.policy_set.as_mut() else {
        fail("default state has a policy set")
    };
    for a in 0..EXTRA_ACTIONS {
        version.schema.push_str(&format!(
            "\naction \"bench.a{a}\" appliesTo {{ principal: [User, Service], resource: [Space, Document], context: RequestContext }};"
        ));
    }
    let mut extra = String::with_capacity(EXTRA_POLICIES * 160);
    for i in 0..EXTRA_POLICIES {
        let action = i % EXTRA_ACTIONS;
        let principal = if i % 2 == 0 {
            format!("principal == User::\"u{}\"", i % USERS)
        } else {
            format!("principal in Group::\"g{i}\"")
        };
        extra.push_str(&format!(
            "@id(\"bench-{i}\")\npermit({principal}, action == Action::\"bench.a{action}\", resource in Space::\"s{i}\") when {{ context.risk_score < 50 }};\n"
        ));
    }
    extra.push_str(
        "@id(\"bench-share\")\npermit(principal == ?principal, action == Action::\"document.read\", resource in ?resource);\n",
    );
    version.files.push(PolicyFile {
        name: String::from("bench.cedar"),
        text: extra,
    });
    state.template_links = (0..TEMPLATE_LINKS)
        .map(|i| TemplateLink {
            id: format!("bench-share-{i}"),
            template: String::from("bench-share"),
            principal: Some(eref("User", &format!("u{i}"))),
            resource: Some(eref("Space", &format!("s{i}"))),
        })
        .collect();
    state
        .principals
        .extend((0..USERS).map(|i| user(&format!("u{i}"))));
    let per_user = ASSIGNMENTS / USERS;
    state.assignments.extend((0..ASSIGNMENTS).map(|i| {
        let u = i / per_user;
        assignment(
            format!("b{i}"),
            eref("User", &format!("u{u}")),
            if i % 3 == 0 { "guest" } else { "member" },
            Scope::Entity(eref("Space", &format!("s{}", i % 50_000))),
        )
    }));
    state
}

fn facts() -> RequestFacts {
    RequestFacts {
        now: 1_767_693_600_000,
        local_time: LocalTime {
            hour: 10,
            minute: 0,
            weekday: 2,
        },
        risk_score: 10,
        mfa: true,
        device_id: Some(String::from("laptop-1")),
        ip: Some(String::from("10.1.2.3")),
        band: String::from("AMBER"),
    }
}

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
    let principal = eref("User", "alice");
    let resource = eref("Document", "d1");
    let facts = facts();
    let request = DecisionRequest {
        principal: &principal,
        action: "document.read",
        resource: &resource,
        route_parents: &[],
        facts: &facts,
    };

    let default = Snapshot::build(default_state(), 0).unwrap_or_else(|e| fail(&e.to_string()));
    let check = decide(&default, &request);
    if !check.allowed || check.determining_policies != ["role:member"] {
        fail(&format!(
            "default decision is not the expected allow: {check:?}"
        ));
    }
    c.bench_function("decide/default", |b| {
        b.iter(|| decide(black_box(&default), black_box(&request)))
    });

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
    c.bench_function("decide/heavy", |b| {
        b.iter(|| decide(black_box(&heavy), black_box(&request)))
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
