//! The people and resources the end-to-end tests decide about, written into the store of
//! the running process.
//!
//! Tenant `t1`: spaces `s1`, `s2` and the archived `old`; documents `d1`, `d2` (public) and
//! `secret` (classification 2) in `s1`, `od` in `old`. Tenant `t2`: space `x1`.

use portcullis_model::{
    Assignment, AssignmentConditions, EntityAttributes, EntityRecord, EntityRef, Principal,
    PrincipalAttributes, PrincipalKind, PrincipalStatus, Scope,
};
use portcullis_store::Import;

fn eref(s: &str) -> EntityRef {
    s.parse().expect("entity reference")
}

fn entity(uid: &str, parents: &[&str], tenant: &str, classification: Option<i64>) -> EntityRecord {
    EntityRecord {
        uid: eref(uid),
        parents: parents.iter().map(|p| eref(p)).collect(),
        attributes: EntityAttributes {
            tenant: Some(tenant.to_owned()),
            classification,
            ..EntityAttributes::default()
        },
    }
}

/// A user of `tenant`.
pub fn user(id: &str, tenant: &str) -> Principal {
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

pub fn grant(id: &str, principal: &str, role: &str, scope: Option<&str>) -> Assignment {
    Assignment {
        id: id.to_owned(),
        principal: eref(principal),
        role: role.to_owned(),
        scope: scope.map_or(Scope::Global, |s| Scope::Entity(eref(s))),
        conditions: AssignmentConditions::default(),
        assigned_by: Some(String::from("e2e")),
        reason: None,
    }
}

/// Everything, as one import.
pub fn import() -> Import {
    let mut alice = user("alice", "t1");
    alice.attributes.clearance = 3;
    alice.trusted_devices = vec![String::from("laptop-1")];
    let mut carl = user("carl", "t1");
    carl.trusted_devices = vec![String::from("laptop-9")];
    let mut sam = user("sam", "t1");
    sam.status = PrincipalStatus::Suspended;
    let mut bob = user("bob", "t1");
    bob.attributes.manager = Some(String::from("mia"));
    let billing = Principal {
        kind: PrincipalKind::Service,
        ..user("billing", "t1")
    };
    let mut old = entity(r#"Space::"old""#, &[r#"Tenant::"t1""#], "t1", None);
    old.attributes.archived = true;
    Import {
        principals: vec![
            alice,
            user("gina", "t1"),
            user("dora", "t1"),
            sam,
            carl,
            user("tom", "t2"),
            user("mia", "t1"),
            bob,
            billing,
        ],
        entities: vec![
            entity(r#"Tenant::"t1""#, &[], "t1", None),
            entity(r#"Tenant::"t2""#, &[], "t2", None),
            entity(r#"Space::"s1""#, &[r#"Tenant::"t1""#], "t1", None),
            entity(r#"Space::"s2""#, &[r#"Tenant::"t1""#], "t1", None),
            old,
            entity(r#"Space::"x1""#, &[r#"Tenant::"t2""#], "t2", None),
            entity(r#"Document::"d1""#, &[r#"Space::"s1""#], "t1", Some(0)),
            entity(r#"Document::"d2""#, &[r#"Space::"s1""#], "t1", Some(0)),
            entity(r#"Document::"secret""#, &[r#"Space::"s1""#], "t1", Some(2)),
            entity(r#"Document::"od""#, &[r#"Space::"old""#], "t1", Some(0)),
        ],
        assignments: vec![
            grant(
                "a-alice",
                r#"User::"alice""#,
                "guardian",
                Some(r#"Space::"s1""#),
            ),
            grant(
                "a-alice-old",
                r#"User::"alice""#,
                "guardian",
                Some(r#"Space::"old""#),
            ),
            grant("a-gina", r#"User::"gina""#, "guest", Some(r#"Space::"s1""#)),
            grant(
                "a-dora",
                r#"User::"dora""#,
                "guest",
                Some(r#"Document::"d1""#),
            ),
            grant("a-sam", r#"User::"sam""#, "member", Some(r#"Space::"s1""#)),
            grant(
                "a-carl",
                r#"User::"carl""#,
                "member",
                Some(r#"Space::"s1""#),
            ),
            grant("a-tom", r#"User::"tom""#, "admin", None),
            grant(
                "a-billing",
                r#"Service::"billing""#,
                "service",
                Some(r#"Tenant::"t1""#),
            ),
        ],
        ..Import::default()
    }
}
