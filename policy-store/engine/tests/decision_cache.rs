//! The decision cache answers only for inputs it has seen: every input of the evaluation
//! that changes must change the outcome where the policies say so, with the shipped
//! policies and roles.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test loudly")]

use std::path::PathBuf;

use portcullis_engine::decision::{
    DecisionRequest, LocalTime, RequestFacts, decide, decide_uncached,
};
use portcullis_engine::snapshot::{Snapshot, StoreDelta, StoreState};
use portcullis_model::*;

fn read(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../policies")
            .join(name),
    )
    .unwrap()
}

fn eref(s: &str) -> EntityRef {
    s.parse().unwrap()
}

fn alice(status: PrincipalStatus) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        id: String::from("alice"),
        status,
        tenant: Some(String::from("t1")),
        groups: vec![],
        attributes: PrincipalAttributes {
            clearance: 3,
            ..PrincipalAttributes::default()
        },
        trusted_devices: vec![String::from("laptop-1")],
    }
}

fn assignment(id: &str, role: &str, scope: &str, conditions: AssignmentConditions) -> Assignment {
    Assignment {
        id: id.to_owned(),
        principal: eref(r#"User::"alice""#),
        role: role.to_owned(),
        scope: Scope::Entity(eref(scope)),
        conditions,
        assigned_by: None,
        reason: None,
    }
}

/// Alice is a member of space s1 until t=2000 and a guardian of it with MFA only; document
/// d1 (classification 2) sits in s1.
fn snapshot() -> Snapshot {
    let roles: serde_json::Value = serde_json::json!([
        {"name": "member", "actions": ["READ", "WRITE", "SHARE"]},
        {"name": "guardian", "actions": ["READ", "WRITE", "SHARE", "ADMIN"]}
    ]);
    let state = StoreState {
        revision: 1,
        principals: vec![alice(PrincipalStatus::Active)],
        roles: serde_json::from_value(roles).unwrap(),
        assignments: vec![
            assignment(
                "a1",
                "member",
                r#"Space::"s1""#,
                AssignmentConditions {
                    valid_until: Some(2_000),
                    ..AssignmentConditions::default()
                },
            ),
            assignment(
                "a2",
                "guardian",
                r#"Space::"s1""#,
                AssignmentConditions {
                    require_mfa: true,
                    ..AssignmentConditions::default()
                },
            ),
        ],
        entities: vec![
            EntityRecord {
                uid: eref(r#"Space::"s1""#),
                parents: vec![],
                attributes: EntityAttributes::default(),
            },
            EntityRecord {
                uid: eref(r#"Document::"d1""#),
                parents: vec![eref(r#"Space::"s1""#)],
                attributes: EntityAttributes {
                    classification: Some(2),
                    ..EntityAttributes::default()
                },
            },
        ],
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
        held_entity_types: Default::default(),
    };
    Snapshot::build(state, 0).unwrap()
}

fn facts() -> RequestFacts {
    RequestFacts {
        now: 1_000,
        local_time: LocalTime {
            hour: 10,
            minute: 0,
            weekday: 2,
        },
        risk_score: 10,
        mfa: false,
        device_id: Some(String::from("laptop-1")),
        ip: Some(String::from("10.0.0.1")),
        band: String::from("GREEN"),
        extra: Vec::new(),
    }
}

/// Decides through the cache twice (the second must come from it) and checks the outcome
/// against an evaluation that bypasses the cache.
fn allowed(snapshot: &Snapshot, action: &str, resource: &str, facts: &RequestFacts) -> bool {
    let principal = eref(r#"User::"alice""#);
    let resource = eref(resource);
    let request = DecisionRequest {
        principal: &principal,
        action,
        resource: &resource,
        route_parents: &[],
        facts,
        claimed: None,
    };
    let first = decide(snapshot, &request);
    let second = decide(snapshot, &request);
    assert!(
        second.cached,
        "a repeated request is answered from the cache"
    );
    let fresh = decide_uncached(snapshot, &request);
    assert!(!fresh.cached);
    for d in [&first, &second] {
        assert_eq!(
            (
                d.allowed,
                d.reason,
                &d.determining_policies,
                &d.effective_roles
            ),
            (
                fresh.allowed,
                fresh.reason,
                &fresh.determining_policies,
                &fresh.effective_roles
            )
        );
    }
    fresh.allowed
}

#[test]
fn each_context_input_is_part_of_the_key() {
    let s = snapshot();
    let doc = r#"Document::"d1""#;
    let base = facts();
    assert!(allowed(&s, "document.read", doc, &base));

    let risky = RequestFacts {
        risk_score: 90,
        ..facts()
    };
    assert!(!allowed(&s, "document.read", doc, &risky));

    let untrusted = RequestFacts {
        device_id: Some(String::from("kiosk")),
        ..facts()
    };
    assert!(!allowed(&s, "document.read", doc, &untrusted));

    let no_device = RequestFacts {
        device_id: None,
        ..facts()
    };
    assert!(!allowed(&s, "document.read", doc, &no_device));
}

#[test]
fn the_clock_reaches_the_key_through_roles_and_local_time() {
    let s = snapshot();
    let doc = r#"Document::"d1""#;
    assert!(allowed(&s, "document.read", doc, &facts()));
    // The member assignment has lapsed and the guardian one needs MFA.
    let later = RequestFacts {
        now: 5_000,
        ..facts()
    };
    assert!(!allowed(&s, "document.read", doc, &later));
    let later_with_mfa = RequestFacts {
        now: 5_000,
        mfa: true,
        ..facts()
    };
    assert!(allowed(&s, "document.read", doc, &later_with_mfa));

    // document.delete is SENSITIVE: business hours only.
    let evening = RequestFacts {
        local_time: LocalTime {
            hour: 20,
            minute: 0,
            weekday: 2,
        },
        ..facts()
    };
    assert!(allowed(&s, "document.delete", doc, &facts()));
    assert!(!allowed(&s, "document.delete", doc, &evening));
    let saturday = RequestFacts {
        local_time: LocalTime {
            hour: 10,
            minute: 0,
            weekday: 6,
        },
        ..facts()
    };
    assert!(!allowed(&s, "document.delete", doc, &saturday));
}

#[test]
fn what_no_policy_of_the_action_reads_is_not_part_of_the_key() {
    let s = snapshot();
    let principal = eref(r#"User::"alice""#);
    let doc = eref(r#"Document::"d1""#);
    let at = |hour, minute, weekday| LocalTime {
        hour,
        minute,
        weekday,
    };
    let ask = |action: &str, facts: &RequestFacts| {
        let request = DecisionRequest {
            principal: &principal,
            action,
            resource: &doc,
            route_parents: &[],
            facts,
            claimed: None,
        };
        let decision = decide(&s, &request);
        assert_eq!(decision.allowed, decide_uncached(&s, &request).allowed);
        decision
    };
    assert!(!ask("document.read", &facts()).cached);
    // The shipped policies for document.read read neither the time nor the band nor the
    // client IP (the roles in force, part of the key, do not change here).
    let elsewhere = RequestFacts {
        local_time: at(11, 42, 3),
        band: String::from("AMBER"),
        ip: Some(String::from("192.0.2.1")),
        ..facts()
    };
    let answer = ask("document.read", &elsewhere);
    assert!(answer.cached && answer.allowed);
    // They read the risk score.
    let riskier = RequestFacts {
        risk_score: 11,
        ..facts()
    };
    assert!(!ask("document.read", &riskier).cached);

    // document.delete is SENSITIVE: its policies read the hour and the weekday, not the
    // minute.
    assert!(!ask("document.delete", &facts()).cached);
    let an_hour_later = RequestFacts {
        local_time: at(11, 0, 2),
        ..facts()
    };
    assert!(!ask("document.delete", &an_hour_later).cached);
    let half_past = RequestFacts {
        local_time: at(10, 30, 2),
        ..facts()
    };
    assert!(ask("document.delete", &half_past).cached);
}

#[test]
fn action_and_resource_are_part_of_the_key() {
    let s = snapshot();
    assert!(allowed(&s, "document.read", r#"Document::"d1""#, &facts()));
    assert!(!allowed(&s, "document.read", r#"Document::"d2""#, &facts()));
    // space.delete is ADMIN: the member role does not grant it, the guardian role needs MFA.
    assert!(!allowed(&s, "space.delete", r#"Space::"s1""#, &facts()));
}

#[test]
fn a_patched_snapshot_does_not_reuse_decisions() {
    let s = snapshot();
    let doc = r#"Document::"d1""#;
    assert!(allowed(&s, "document.read", doc, &facts()));
    let suspended = s
        .patched(
            StoreDelta {
                revision: 2,
                principals: vec![(
                    eref(r#"User::"alice""#),
                    Some((alice(PrincipalStatus::Suspended), vec![])),
                )],
                ..StoreDelta::default()
            },
            0,
        )
        .unwrap();
    assert!(!allowed(&suspended, "document.read", doc, &facts()));
    // The old snapshot still answers as before.
    assert!(allowed(&s, "document.read", doc, &facts()));
}

#[test]
fn a_state_copy_follows_the_same_updates_as_the_snapshot() {
    use portcullis_engine::snapshot::SnapshotUpdate;
    let s = snapshot();
    let mut state = StoreState {
        revision: 1,
        principals: vec![alice(PrincipalStatus::Active)],
        ..StoreState::default()
    };
    let delta = StoreDelta {
        revision: 2,
        principals: vec![(
            eref(r#"User::"alice""#),
            Some((alice(PrincipalStatus::Suspended), vec![])),
        )],
        ..StoreDelta::default()
    };
    state.apply(SnapshotUpdate::Patch(delta.clone()));
    let patched = s.patched(delta, 0).unwrap();
    assert_eq!(state.revision, patched.revision());
    assert_eq!(state.principals.len(), 1);
    assert_eq!(state.principals[0].status, PrincipalStatus::Suspended);
    // Round trip through JSON, as the last-known-good file does.
    let json = serde_json::to_string(&state).unwrap();
    let back: StoreState = serde_json::from_str(&json).unwrap();
    assert_eq!(back.principals, state.principals);
}
