//! The decision core's evaluation against Cedar's own authorizer.
//!
//! For every action of the schema and many principals, resources and request facts, the
//! entity slice is built twice: as the decision core builds it (only what the action's
//! policies can read of the action hierarchy and the context) and in full. Cedar's
//! `Authorizer` then evaluates the whole compiled policy set, with every condition as Cedar
//! builds it, against the full slice; the decision core evaluates its indexed, prepared
//! policies against its own. Both must find the same satisfied and erroring policies.

use std::collections::BTreeSet;
use std::path::Path;

use cedar_policy_core::authorizer::{AuthorizationError, Authorizer};

use super::*;
use crate::policy::Reads;
use crate::slice::ContextAttrs;
use crate::snapshot::{HeldEntityTypes, SnapshotError, StoreDelta, StoreState};
use portcullis_model::{
    AssignmentConditions, EntityAttributes, EntityRecord, PolicyFile, PolicySetVersion, Principal,
    PrincipalAttributes, PrincipalStatus, Role, Scope, TemplateLink,
};

/// Policies of every scope shape the index and the prepared conditions treat apart, with
/// bodies that read the action, the context whole and in part, and that raise errors.
const SHAPES: &str = r#"
@id("eq-principal")
permit (principal == User::"bob", action == Action::"document.delete", resource in Space::"s1")
when { context.hour >= 0 };

@id("eq-group")
permit (principal == Group::"team", action == Action::"space.read", resource);

@id("in-group")
permit (principal in Group::"org", action in [Action::"SHARE"], resource is Document in Tenant::"t1");

@id("is-in-group")
permit (principal is User in Group::"team", action == Action::"entity.read", resource);

@id("service-risk")
forbid (principal is Service, action, resource)
when { context.risk_score > 50 };

@id("ip-range")
forbid (principal, action == Action::"document.update", resource)
when { context has ip && context.ip.isInRange(ip("10.0.0.0/8")) };

@id("action-in-body")
forbid (principal, action in [Action::"SHARE", Action::"space.read"], resource)
when { action in Action::"SHARE" && context.band == "RED" };

@id("context-whole")
forbid (principal, action == Action::"tenant.read", resource)
when { context != context };

@id("device-id")
permit (principal, action == Action::"space.read", resource)
when { context has device_id && context.device_id == "kiosk-9" };

@id("manager-deref")
permit (principal, action == Action::"document.read", resource)
when { principal has manager && principal.manager.clearance > 5 };

@id("overflow")
forbid (principal, action == Action::"document.list", resource)
when { context.risk_score * 4611686018427387904 > 0 };

@id("unless-trusted")
forbid (principal, action in Action::"WRITE", resource)
unless { context.device_trusted };

@id("resource-eq")
forbid (principal, action, resource == Document::"d3")
when { context.minute == 61 };

@id("grant")
permit (principal in ?principal, action in [Action::"READ"], resource in ?resource)
when { context.weekday < 6 };

@id("exact-grant")
permit (principal == ?principal, action, resource == ?resource);

@id("custom-attrs")
permit (principal is User, action == Action::"document.share", resource)
when {
  principal has projects && resource has project && principal.projects.contains(resource.project)
  && principal has cost_center && principal.cost_center == "4711"
};
"#;

fn read_policy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../policies")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn eref(type_name: &str, id: &str) -> EntityRef {
    EntityRef::new(type_name, id).unwrap()
}

fn principal(kind: PrincipalKind, id: &str, tenant: Option<&str>) -> Principal {
    Principal {
        kind,
        id: id.to_owned(),
        status: PrincipalStatus::Active,
        tenant: tenant.map(str::to_owned),
        groups: vec![],
        attributes: PrincipalAttributes::default(),
        trusted_devices: vec![],
    }
}

fn role(name: &str, actions: &[&str], scope_types: &[&str]) -> Role {
    Role {
        name: name.to_owned(),
        description: String::new(),
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        scope_types: scope_types.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn entity(uid: EntityRef, parents: &[EntityRef], attributes: EntityAttributes) -> EntityRecord {
    EntityRecord {
        uid,
        parents: parents.to_vec(),
        attributes,
    }
}

/// The schema with attributes beyond the model's own: `cost_center` and `projects` on
/// users, `project` on documents.
fn with_custom_attributes(schema: &str) -> String {
    let extended = schema
        .replacen(
            "  gdpr_consent: Bool,\n",
            "  gdpr_consent: Bool,\n  cost_center?: String,\n  projects?: Set<String>,\n",
            1,
        )
        .replacen(
            "entity Document in [Space, Tenant] {\n",
            "entity Document in [Space, Tenant] {\n  project?: String,\n",
            1,
        );
    assert!(
        extended.contains("cost_center?") && extended.contains("  project?: String"),
        "both declarations added"
    );
    extended
}

/// Custom attributes: `cost_center` (text) and `projects` (a set of text).
fn custom(
    cost_center: &str,
    projects: &[&str],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    std::collections::BTreeMap::from([
        (String::from("cost_center"), serde_json::json!(cost_center)),
        (String::from("projects"), serde_json::json!(projects)),
    ])
}

/// The test's principals, roles, assignments, entities and links, with the policy files
/// `files` (from `policies/`) and [`SHAPES`].
fn state(files: &[&str]) -> StoreState {
    let mut alice = principal(PrincipalKind::User, "alice", Some("t1"));
    alice.groups = vec![String::from("team")];
    alice.attributes.clearance = 2;
    alice.attributes.manager = Some(String::from("bob"));
    alice.trusted_devices = vec![String::from("laptop-1")];
    alice.attributes.custom = custom("4711", &["apollo"]);
    let mut bob = principal(PrincipalKind::User, "bob", Some("t1"));
    bob.attributes.clearance = 3;
    // The right projects, the wrong cost center.
    bob.attributes.custom = custom("1234", &["apollo", "gemini"]);
    bob.trusted_devices = vec![String::from("laptop-1")];
    let mut dave = principal(PrincipalKind::User, "dave", None);
    dave.groups = vec![String::from("org")];
    let mut carol = principal(PrincipalKind::User, "carol", None);
    carol.status = PrincipalStatus::Suspended;
    let svc = principal(PrincipalKind::Service, "svc", Some("t2"));
    let mut team = principal(PrincipalKind::Group, "team", Some("t1"));
    team.groups = vec![String::from("org")];
    let org = principal(PrincipalKind::Group, "org", None);

    let assign = |id: &str, who: EntityRef, role: &str, scope: Scope, conditions| Assignment {
        id: id.to_owned(),
        principal: who,
        role: role.to_owned(),
        scope,
        conditions,
        assigned_by: None,
        reason: None,
    };
    let always = AssignmentConditions::default;
    let assignments = vec![
        assign(
            "a1",
            eref("User", "alice"),
            "member",
            Scope::Entity(eref("Space", "s1")),
            always(),
        ),
        assign(
            "a2",
            eref("User", "alice"),
            "guest",
            Scope::Entity(eref("Document", "d2")),
            AssignmentConditions {
                require_mfa: true,
                ..always()
            },
        ),
        assign(
            "a3",
            eref("Group", "team"),
            "guardian",
            Scope::Entity(eref("Tenant", "t1")),
            AssignmentConditions {
                allowed_bands: vec![String::from("GREEN")],
                ..always()
            },
        ),
        assign("a4", eref("User", "bob"), "admin", Scope::Global, always()),
        assign(
            "a5",
            eref("Service", "svc"),
            "service",
            Scope::Entity(eref("Tenant", "t2")),
            always(),
        ),
        assign(
            "a6",
            eref("User", "carol"),
            "member",
            Scope::Entity(eref("Space", "s1")),
            always(),
        ),
    ];

    let tenant = |t: &str| EntityAttributes {
        tenant: Some(t.to_owned()),
        ..EntityAttributes::default()
    };
    let entities = vec![
        entity(eref("Tenant", "t1"), &[], EntityAttributes::default()),
        entity(eref("Tenant", "t2"), &[], EntityAttributes::default()),
        entity(
            eref("Space", "s1"),
            &[eref("Tenant", "t1")],
            EntityAttributes {
                owner: Some(String::from("alice")),
                ..EntityAttributes::default()
            },
        ),
        entity(
            eref("Space", "s2"),
            &[eref("Tenant", "t1")],
            EntityAttributes {
                archived: true,
                ..EntityAttributes::default()
            },
        ),
        entity(
            eref("Document", "d1"),
            &[eref("Space", "s1")],
            EntityAttributes {
                classification: Some(1),
                custom: std::collections::BTreeMap::from([(
                    String::from("project"),
                    serde_json::json!("apollo"),
                )]),
                ..EntityAttributes::default()
            },
        ),
        entity(
            eref("Document", "d2"),
            &[eref("Space", "s2")],
            EntityAttributes {
                classification: Some(3),
                ..EntityAttributes::default()
            },
        ),
        entity(eref("Document", "d3"), &[eref("Space", "s1")], tenant("t2")),
        entity(
            eref("Entity", "e1"),
            &[eref("Tenant", "t1")],
            EntityAttributes {
                kind: Some(String::from("issuer")),
                ..EntityAttributes::default()
            },
        ),
        entity(
            eref("Entity", "e2"),
            &[eref("Entity", "e1")],
            EntityAttributes::default(),
        ),
    ];

    let link = |id: &str, template: &str, principal: EntityRef, resource: EntityRef| TemplateLink {
        id: id.to_owned(),
        template: template.to_owned(),
        principal: Some(principal),
        resource: Some(resource),
    };
    StoreState {
        revision: 1,
        principals: vec![alice, bob, carol, dave, svc, team, org],
        roles: vec![
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
            role("admin", &["READ", "WRITE", "SHARE", "ADMIN", "PEOPLE"], &[]),
            role(
                "service",
                &["READ", "WRITE"],
                &["Tenant", "Space", "Document", "Entity"],
            ),
        ],
        assignments,
        entities,
        revoked_sessions: vec![],
        template_links: vec![
            link(
                "grant-alice-s1",
                "grant",
                eref("User", "alice"),
                eref("Space", "s1"),
            ),
            link(
                "grant-org-t2",
                "grant",
                eref("Group", "org"),
                eref("Tenant", "t2"),
            ),
            link(
                "exact-svc-t2",
                "exact-grant",
                eref("Service", "svc"),
                eref("Tenant", "t2"),
            ),
        ],
        policy_set: Some(PolicySetVersion {
            version: 1,
            files: files
                .iter()
                .map(|name| PolicyFile {
                    name: (*name).to_owned(),
                    text: read_policy_file(name),
                })
                .chain([PolicyFile {
                    name: String::from("shapes.cedar"),
                    text: String::from(SHAPES),
                }])
                .collect(),
            schema: with_custom_attributes(&read_policy_file("schema.cedarschema")),
            created_by: None,
            created_at: 0,
        }),
        held_entity_types: Default::default(),
    }
}

/// Principals as tokens' claims describe them, with their digests: `zoe` (a user of t1 in
/// the stored group `team`, a member of t1 and a guardian everywhere by her claims), `robot`
/// (a service of t2) and `alice` (stored: her claims must be ignored).
fn claimed_principals(snapshot: &Snapshot) -> Vec<(PrincipalView, [u8; 32])> {
    let claim = |id: &str, who: &Principal, role: &str, scope: Scope| Assignment {
        id: format!("claim:{id}"),
        principal: who.entity_ref(),
        role: role.to_owned(),
        scope,
        conditions: AssignmentConditions::default(),
        assigned_by: None,
        reason: None,
    };
    let mut zoe = principal(PrincipalKind::User, "zoe", Some("t1"));
    zoe.groups = vec![String::from("team")];
    zoe.attributes.clearance = 2;
    zoe.attributes.manager = Some(String::from("bob"));
    zoe.attributes.custom = custom("4711", &["apollo"]);
    let zoe_roles = vec![
        claim(
            "member",
            &zoe,
            "member",
            Scope::Entity(eref("Tenant", "t1")),
        ),
        claim("guardian", &zoe, "guardian", Scope::Global),
    ];
    let robot = principal(PrincipalKind::Service, "robot", Some("t2"));
    let robot_roles = vec![claim(
        "service",
        &robot,
        "service",
        Scope::Entity(eref("Tenant", "t2")),
    )];
    let alice = principal(PrincipalKind::User, "alice", Some("t2"));
    let alice_roles = vec![claim("admin", &alice, "admin", Scope::Global)];
    [(zoe, zoe_roles), (robot, robot_roles), (alice, alice_roles)]
        .into_iter()
        .enumerate()
        .map(|(n, (p, roles))| {
            let digest = [u8::try_from(n).unwrap(); 32];
            (snapshot.principal_view(p, roles), digest)
        })
        .collect()
}

/// Request facts that turn the context-reading policies on and off.
fn facts() -> Vec<RequestFacts> {
    let at = |hour, minute, weekday| LocalTime {
        hour,
        minute,
        weekday,
    };
    vec![
        RequestFacts {
            now: 1_700_000_000_000,
            local_time: at(10, 30, 2),
            risk_score: 10,
            mfa: true,
            device_id: Some(String::from("laptop-1")),
            ip: Some(String::from("10.1.2.3")),
            band: String::from("GREEN"),
            extra: Vec::new(),
        },
        RequestFacts {
            now: 1_700_000_000_000,
            local_time: at(20, 5, 6),
            risk_score: 60,
            mfa: false,
            device_id: Some(String::from("kiosk-9")),
            ip: Some(String::from("192.0.2.7")),
            band: String::from("RED"),
            extra: Vec::new(),
        },
        RequestFacts {
            now: 1_700_000_000_000,
            local_time: at(9, 0, 5),
            risk_score: 0,
            mfa: false,
            device_id: None,
            ip: None,
            band: String::from("AMBER"),
            extra: Vec::new(),
        },
    ]
}

/// Policy ids, sorted.
fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    ids.into_iter()
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn prepared_evaluation_finds_what_cedars_authorizer_finds() {
    let snapshot = Snapshot::build(state(&["default.cedar"]), 0).unwrap();
    let all: &cedar_policy_core::ast::PolicySet = snapshot.policies().policy_set().as_ref();
    let everything = Reads {
        action: true,
        context: ContextAttrs::ALL,
    };
    // Principals from claims: two the store does not hold, and alice, whose stored record
    // wins over what a token claims for her.
    let claimed = claimed_principals(&snapshot);
    let claimed_for = |key: &EntityRef| {
        claimed
            .iter()
            .find(|(view, _)| view.principal.entity_ref() == *key)
            .map(|(view, digest)| ClaimedPrincipal { view, digest })
    };
    let principals = [
        eref("User", "alice"),
        eref("User", "bob"),
        eref("User", "carol"),
        eref("User", "dave"),
        eref("Service", "svc"),
        eref("User", "zoe"),
        eref("Service", "robot"),
    ];
    let resources = [
        (eref("Tenant", "t1"), vec![]),
        (eref("Tenant", "t2"), vec![]),
        (eref("Space", "s1"), vec![eref("Tenant", "t1")]),
        (eref("Space", "s2"), vec![]),
        (eref("Document", "d1"), vec![eref("Space", "s1")]),
        (eref("Document", "d2"), vec![]),
        (eref("Document", "d3"), vec![]),
        (eref("Document", "unknown"), vec![eref("Space", "s1")]),
        (eref("Entity", "e2"), vec![]),
        (eref("User", "alice"), vec![]),
        (eref("User", "bob"), vec![]),
    ];
    let mut actions: Vec<&str> = snapshot.policies().index().action_ids().collect();
    actions.sort_unstable();
    let facts = facts();

    let mut compared = 0_usize;
    let mut outcomes: BTreeSet<&'static str> = BTreeSet::new();
    let mut determining_seen: BTreeSet<String> = BTreeSet::new();
    let mut projected = 0_usize;
    let mut claimed_decided = 0_usize;
    for action_id in &actions {
        for principal in &principals {
            for (resource, route_parents) in &resources {
                for facts in &facts {
                    let request = DecisionRequest {
                        principal,
                        action: action_id,
                        resource,
                        route_parents,
                        facts,
                        claimed: claimed_for(principal),
                    };
                    let Ok(resolved) = Resolved::of(Held::new(&snapshot, None, &request), &request)
                    else {
                        continue;
                    };
                    assert_eq!(
                        resolved.claimed,
                        principal.id() != "alice" && request.claimed.is_some(),
                        "{principal}"
                    );
                    claimed_decided += usize::from(resolved.claimed);
                    let reads = resolved.action.reads();
                    if reads != everything {
                        projected += 1;
                    }
                    let ours = resolved
                        .cedar_input(reads)
                        .unwrap()
                        .evaluate(resolved.action);
                    let full = resolved.cedar_input(everything).unwrap();
                    let theirs = Authorizer::new().is_authorized(full.request, all, &full.entities);

                    let case = format!("{principal} {action_id} {resource} {facts:?}");
                    let their_errors = ids(theirs.diagnostics.errors.iter().map(|e| {
                        let AuthorizationError::PolicyEvaluationError { id, .. } = e;
                        id.as_ref()
                    }));
                    if their_errors.is_empty() {
                        let their_reasons =
                            ids(theirs.diagnostics.reason.iter().map(AsRef::as_ref));
                        let their_allow =
                            theirs.decision == cedar_policy_core::authorizer::Decision::Allow;
                        assert_eq!(ours.allowed, their_allow, "{case}");
                        assert_eq!(ours.determining_policies, their_reasons, "{case}");
                        assert!(ours.errors.is_empty(), "{case}: {:?}", ours.errors);
                    } else {
                        // Cedar skips an erroring policy; the decision core denies.
                        assert_eq!(ours.reason, DecisionReason::EvaluationError, "{case}");
                        assert_eq!(ours.determining_policies, their_errors, "{case}");
                    }
                    outcomes.insert(ours.reason.as_str());
                    determining_seen.extend(ours.determining_policies);
                    compared += 1;
                }
            }
        }
    }

    // The comparison covered every kind of outcome and the policies of every shape.
    assert!(compared > 1_000, "{compared} requests compared");
    assert!(projected > 0, "no action leaves anything out of its slice");
    assert!(claimed_decided > 100, "{claimed_decided} claimed requests");
    for reason in [
        "allowed",
        "forbidden_by_policy",
        "no_permit",
        "evaluation_error",
    ] {
        assert!(
            outcomes.contains(reason),
            "no request came out {reason}: {outcomes:?}"
        );
    }
    for id in [
        "eq-principal",
        "in-group",
        "is-in-group",
        "service-risk",
        "ip-range",
        "action-in-body",
        "device-id",
        "manager-deref",
        "overflow",
        "unless-trusted",
        "grant-alice-s1",
        "grant-org-t2",
        "exact-svc-t2",
        "role:member",
        "role:guardian",
        "role:admin",
        "status-not-active",
        "custom-attrs",
        "tenant-isolation",
        "owner-access",
        "self-read",
    ] {
        assert!(
            determining_seen.contains(id),
            "`{id}` never decided a request"
        );
    }
}

#[test]
fn reads_are_what_the_conditions_mention() {
    let snapshot = Snapshot::build(state(&[]), 0).unwrap();
    let index = snapshot.policies().index();
    let reads = |action: &str| index.action(action).unwrap().reads();
    let attrs = |names: &[&str]| {
        names
            .iter()
            .fold(ContextAttrs::default(), |set, name| set.with(name))
    };
    // Every action: `service-risk` (risk_score), `resource-eq` (minute).
    let read = reads("document.read");
    assert!(!read.action);
    assert_eq!(read.context, attrs(&["risk_score", "minute", "weekday"]));
    let update = reads("document.update");
    assert!(!update.action);
    assert_eq!(
        update.context,
        attrs(&["risk_score", "minute", "ip", "device_trusted"])
    );
    let delete = reads("document.delete");
    assert_eq!(
        delete.context,
        attrs(&["risk_score", "minute", "hour", "device_trusted"])
    );
    // `action-in-body` reads the action and the band; `device-id` the device id.
    let space_read = reads("space.read");
    assert!(space_read.action);
    assert_eq!(
        space_read.context,
        attrs(&["risk_score", "minute", "weekday", "band", "device_id"])
    );
    // `context != context` reads the context whole.
    assert_eq!(reads("tenant.read").context, ContextAttrs::ALL);
}

/// The control plane's answer for `key`, as a snapshot of the shared part prepares it.
fn fetch(full: &Snapshot, shared: &Snapshot, key: &EntityRef) -> Arc<Fetched> {
    let view = match full.principal(key) {
        Some(v) => Some(FetchedView::Principal(Arc::new(
            shared.principal_view(v.principal.clone(), v.assignments().cloned()),
        ))),
        None => full
            .entity(key)
            .map(|e| FetchedView::Entity(Arc::new(shared.entity_view(e.record.clone())))),
    };
    Arc::new(Fetched {
        key: key.clone(),
        revision: 1,
        view,
    })
}

/// Cached state mode: a snapshot of the shared part (groups, and the entities of the held
/// types) plus the users, services and entities [`first_missing`] names, fetched one at a
/// time, decides every request as the full snapshot does.
fn the_shared_state_decides_as_the_full_state(held: &HeldEntityTypes) {
    let full = Snapshot::build(state(&["default.cedar"]), 0).unwrap();
    let shared = Snapshot::build(state(&["default.cedar"]).shared(held), 0).unwrap();
    assert!(shared.principal(&eref("User", "alice")).is_none());
    assert!(shared.principal(&eref("Group", "team")).is_some());
    assert!(shared.entity(&eref("Space", "s1")).is_some());
    assert_eq!(
        shared.entity(&eref("Document", "d1")).is_some(),
        held.holds(&eref("Document", "d1"))
    );
    let principals = [
        eref("User", "alice"),
        eref("User", "bob"),
        eref("User", "carol"),
        eref("User", "dave"),
        eref("User", "nobody"),
        eref("Service", "svc"),
        eref("Group", "team"),
    ];
    let resources = [
        (eref("Space", "s1"), vec![eref("Tenant", "t1")]),
        (eref("Document", "d1"), vec![eref("Space", "s1")]),
        (eref("Document", "d2"), vec![eref("Space", "s2")]),
        (eref("Document", "d3"), vec![eref("Space", "s1")]),
        // The route claims a parent the stored document does not have.
        (eref("Document", "d1"), vec![eref("Space", "s2")]),
        (eref("Document", "unknown"), vec![eref("Space", "s1")]),
        // Two levels of a type that is not held.
        (eref("Entity", "e2"), vec![]),
        (eref("User", "alice"), vec![]),
        (eref("User", "bob"), vec![]),
        (eref("User", "nobody"), vec![]),
    ];
    let mut actions: Vec<&str> = full.policies().index().action_ids().collect();
    actions.sort_unstable();
    let facts = facts();
    let (mut compared, mut allowed) = (0_usize, 0_usize);
    let (mut managers_fetched, mut entities_fetched) = (0_usize, 0_usize);
    for action in &actions {
        for principal in &principals {
            for (resource, route_parents) in &resources {
                for facts in &facts {
                    let request = DecisionRequest {
                        principal,
                        action,
                        resource,
                        route_parents,
                        facts,
                        claimed: None,
                    };
                    let mut fetched: Vec<Arc<Fetched>> = Vec::new();
                    while let Some(missing) = first_missing(&shared, &fetched, &request) {
                        assert!(fetched.len() < 8, "fetches without end: {fetched:?}");
                        fetched.push(fetch(&full, &shared, &missing));
                    }
                    if fetched.iter().any(|f| {
                        f.key.type_name() == "User" && f.key != *principal && f.key != *resource
                    }) {
                        managers_fetched += 1;
                    }
                    entities_fetched += fetched
                        .iter()
                        .filter(|f| PrincipalKind::from_cedar_type(f.key.type_name()).is_none())
                        .count();
                    let theirs = decide_uncached(&full, &request);
                    let ours = decide_fetched(&shared, &fetched, &request);
                    let case =
                        format!("{principal} {action} {resource} {route_parents:?} {facts:?}");
                    assert_eq!(ours.allowed, theirs.allowed, "{case}");
                    assert_eq!(ours.reason, theirs.reason, "{case}");
                    assert_eq!(
                        ours.determining_policies, theirs.determining_policies,
                        "{case}"
                    );
                    assert_eq!(ours.effective_roles, theirs.effective_roles, "{case}");
                    assert_eq!(ours.errors, theirs.errors, "{case}");
                    // The second time, from the cache, the same.
                    let again = decide_fetched(&shared, &fetched, &request);
                    assert_eq!(again.allowed, theirs.allowed, "{case}");
                    compared += 1;
                    allowed += usize::from(theirs.allowed);
                }
            }
        }
    }
    assert!(compared > 1000, "{compared}");
    assert!(allowed > 0 && allowed < compared, "{allowed} of {compared}");
    // alice's manager (bob) is read by her decisions, so it was fetched.
    assert!(managers_fetched > 0);
    // Entities are fetched exactly when their type is not held.
    assert_eq!(
        entities_fetched > 0,
        !held.holds(&eref("Document", "d1")),
        "{entities_fetched}"
    );

    // A principal not fetched is never decided on a guess; nor is its manager.
    let facts = &facts[0];
    let request = DecisionRequest {
        principal: &principals[0],
        action: "document.read",
        resource: &resources[1].0,
        route_parents: &resources[1].1,
        facts,
        claimed: None,
    };
    let unfetched = decide_fetched(&shared, &[], &request);
    assert_eq!(unfetched.reason, DecisionReason::StateUnavailable);
    assert!(!unfetched.allowed);
    let alice = fetch(&full, &shared, &principals[0]);
    let without_manager = decide_fetched(&shared, &[Arc::clone(&alice)], &request);
    assert_eq!(without_manager.reason, DecisionReason::StateUnavailable);
    assert!(!without_manager.allowed);
    let bob = fetch(&full, &shared, &eref("User", "bob"));
    let principals_only = [Arc::clone(&alice), Arc::clone(&bob)];
    if held.holds(request.resource) {
        assert_eq!(first_missing(&shared, &principals_only, &request), None);
    } else {
        // Nor is a resource not fetched.
        assert_eq!(
            first_missing(&shared, &principals_only, &request).as_ref(),
            Some(request.resource)
        );
        let without_resource = decide_fetched(&shared, &principals_only, &request);
        assert_eq!(without_resource.reason, DecisionReason::StateUnavailable);
        assert!(!without_resource.allowed);
    }
    // None of that is remembered: with everything fetched it is decided.
    let mut complete = principals_only.to_vec();
    if let Some(missing) = first_missing(&shared, &complete, &request) {
        complete.push(fetch(&full, &shared, &missing));
    }
    assert_eq!(first_missing(&shared, &complete, &request), None);
    assert_ne!(
        decide_fetched(&shared, &complete, &request).reason,
        DecisionReason::StateUnavailable
    );
}

#[test]
fn the_shared_state_with_fetched_principals_decides_as_the_full_state() {
    the_shared_state_decides_as_the_full_state(&HeldEntityTypes::ALL);
}

#[test]
fn the_shared_state_with_fetched_principals_and_entities_decides_as_the_full_state() {
    let held = HeldEntityTypes::only(["Tenant", "Space"].map(String::from));
    the_shared_state_decides_as_the_full_state(&held);
}

/// The shared view of a delta carries the entities of held types and names the others
/// (and users and services) to be evicted; a snapshot holding other types refuses it.
#[test]
fn the_shared_view_of_a_delta_names_what_it_leaves_out() {
    let held = HeldEntityTypes::only(["Tenant", "Space"].map(String::from));
    let full = state(&["default.cedar"]);
    let record = |key: &EntityRef| full.entities.iter().find(|e| e.uid == *key).cloned();
    let (space, document) = (eref("Space", "s1"), eref("Document", "d1"));
    let delta = StoreDelta {
        revision: 2,
        principals: vec![(eref("User", "alice"), None), (eref("Group", "team"), None)],
        entities: vec![
            (space.clone(), record(&space)),
            (document.clone(), record(&document)),
        ],
        ..StoreDelta::default()
    };
    let shared = delta.shared(&held);
    assert_eq!(shared.held_entity_types, held);
    assert_eq!(
        shared.entities.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        [&space]
    );
    assert_eq!(
        shared.principals.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        [&eref("Group", "team")]
    );
    assert_eq!(shared.invalidated, [eref("User", "alice"), document]);

    let holding_all = Snapshot::build(full.shared(&HeldEntityTypes::ALL), 0).unwrap();
    let refused = holding_all.patched(shared.clone(), 0).unwrap_err();
    assert!(
        matches!(refused, SnapshotError::HeldTypesChanged { .. }),
        "{refused}"
    );
    let holding_the_same = Snapshot::build(full.shared(&held), 0).unwrap();
    assert_eq!(holding_the_same.patched(shared, 0).unwrap().revision(), 2);
}

/// A decision remembered over one version of a fetched principal is not answered for
/// another: the revision is part of the key.
#[test]
fn a_decision_cached_over_one_version_is_not_answered_for_the_next() {
    let full = Snapshot::build(state(&["default.cedar"]), 0).unwrap();
    let shared =
        Snapshot::build(state(&["default.cedar"]).shared(&HeldEntityTypes::ALL), 0).unwrap();
    let facts = &facts()[0];
    let (bob, space) = (eref("User", "bob"), eref("Space", "s1"));
    let parents = [eref("Tenant", "t1")];
    let request = DecisionRequest {
        principal: &bob,
        action: "space.read",
        resource: &space,
        route_parents: &parents,
        facts,
        claimed: None,
    };
    let held = full.principal(&bob).unwrap();
    let version = |revision, status| {
        let mut record = held.principal.clone();
        record.status = status;
        Arc::new(Fetched {
            key: bob.clone(),
            revision,
            view: Some(FetchedView::Principal(Arc::new(
                shared.principal_view(record, held.assignments().cloned()),
            ))),
        })
    };
    let active = [version(1, PrincipalStatus::Active)];
    let first = decide_fetched(&shared, &active, &request);
    assert!(first.allowed, "{first:?}");
    assert!(decide_fetched(&shared, &active, &request).cached);
    let suspended = [version(2, PrincipalStatus::Suspended)];
    let next = decide_fetched(&shared, &suspended, &request);
    assert!(!next.cached);
    assert!(!next.allowed, "{next:?}");
}

/// A principal from claims is decided on with its claim-mapped roles when the store does
/// not hold it, in full and in cached state mode; a stored principal (here suspended)
/// always wins; two claim sets of one subject never share a cached decision; roles held
/// only through claims are named as such.
#[test]
fn a_principal_from_claims_is_decided_only_where_the_store_has_none() {
    let full = Snapshot::build(state(&["default.cedar"]), 0).unwrap();
    let shared =
        Snapshot::build(state(&["default.cedar"]).shared(&HeldEntityTypes::ALL), 0).unwrap();
    let facts = &facts()[0];
    let (zoe, document) = (eref("User", "zoe"), eref("Document", "d1"));
    let parents = [eref("Space", "s1")];
    let claim = |role: &str, scope: Scope| Assignment {
        id: format!("claim:{role}"),
        principal: zoe.clone(),
        role: role.to_owned(),
        scope,
        conditions: AssignmentConditions::default(),
        assigned_by: None,
        reason: None,
    };
    let mut record = principal(PrincipalKind::User, "zoe", Some("t1"));
    // d1 is classified 1.
    record.attributes.clearance = 1;
    let member = full.principal_view(
        record.clone(),
        [claim("member", Scope::Entity(eref("Tenant", "t1")))],
    );
    // The same role, a lower clearance: only the digest tells the two apart.
    let uncleared = full.principal_view(
        principal(PrincipalKind::User, "zoe", Some("t1")),
        [claim("member", Scope::Entity(eref("Tenant", "t1")))],
    );
    let request = |claimed: Option<ClaimedPrincipal<'_>>| {
        decide(
            &full,
            &DecisionRequest {
                principal: &zoe,
                action: "document.read",
                resource: &document,
                route_parents: &parents,
                facts,
                claimed,
            },
        )
    };

    let unknown = request(None);
    assert_eq!(unknown.reason, DecisionReason::UnknownPrincipal);
    let allowed = request(Some(ClaimedPrincipal {
        view: &member,
        digest: &[1; 32],
    }));
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!(allowed.effective_roles, ["member"]);
    assert_eq!(allowed.claimed_roles, ["member"]);
    // The same subject with other claims: not answered from the entry above.
    let lower = request(Some(ClaimedPrincipal {
        view: &uncleared,
        digest: &[2; 32],
    }));
    assert!(!lower.allowed, "{lower:?}");
    assert!(!lower.cached);
    assert_eq!(lower.reason, DecisionReason::Forbidden);
    let again = request(Some(ClaimedPrincipal {
        view: &member,
        digest: &[1; 32],
    }));
    assert!(again.allowed && again.cached);

    // Cached state: the store (fetched) says it holds no zoe; her claims decide.
    let absent = Arc::new(Fetched {
        key: zoe.clone(),
        revision: 1,
        view: None,
    });
    let shared_member = shared.principal_view(
        record,
        [claim("member", Scope::Entity(eref("Tenant", "t1")))],
    );
    let cached_request = DecisionRequest {
        principal: &zoe,
        action: "document.read",
        resource: &document,
        route_parents: &parents,
        facts,
        claimed: Some(ClaimedPrincipal {
            view: &shared_member,
            digest: &[1; 32],
        }),
    };
    let mut fetched = vec![absent];
    while let Some(missing) = first_missing(&shared, &fetched, &cached_request) {
        fetched.push(fetch(&full, &shared, &missing));
    }
    let decided = decide_fetched(&shared, &fetched, &cached_request);
    assert!(decided.allowed, "{decided:?}");
    assert_eq!(decided.claimed_roles, ["member"]);

    // carol is stored, suspended: an admin role in her claims changes nothing.
    let carol = eref("User", "carol");
    let claimed_admin = full.principal_view(
        principal(PrincipalKind::User, "carol", Some("t1")),
        [Assignment {
            principal: carol.clone(),
            ..claim("admin", Scope::Global)
        }],
    );
    let carol_request = |claimed| DecisionRequest {
        principal: &carol,
        action: "document.read",
        resource: &document,
        route_parents: &parents,
        facts,
        claimed,
    };
    let stored = decide_uncached(&full, &carol_request(None));
    let with_claims = decide_uncached(
        &full,
        &carol_request(Some(ClaimedPrincipal {
            view: &claimed_admin,
            digest: &[3; 32],
        })),
    );
    assert!(!with_claims.allowed);
    assert_eq!(with_claims.reason, stored.reason);
    assert_eq!(with_claims.effective_roles, stored.effective_roles);
    assert!(with_claims.claimed_roles.is_empty());
}
