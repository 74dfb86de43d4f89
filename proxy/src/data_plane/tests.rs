//! [`DataPlane::check`] branch by branch, in process: the real route map, policies and
//! roles of the repository, the demo data as the snapshot, tokens signed by a fresh Ed25519
//! key, the clock pinned to Tuesday 2026-01-06 10:00 UTC (inside working hours). Each test
//! names the branch it takes and asserts the whole result: outcome, what is answered, what
//! would have been answered in shadow mode, the identity forwarded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use portcullis_engine::snapshot::{Snapshot, SnapshotHandle, StoreState};
use portcullis_model::{
    Assignment, EntityRecord, EntityRef, PolicySetVersion, Principal, RevokedSession,
};
use serde_json::json;

use super::authn::source::KeySource;
use super::authn::{Authenticator, AuthnError};
use super::path::Target;
use super::respond::Rejection;
use super::{DataPlane, Gate, Health, Verdict};
use crate::config::{self, Override};
use crate::data_plane::staleness::Contact;
use crate::devkey::{DEV_ISSUER, DevKey};
use crate::metrics::Metrics;
use crate::metrics::Outcome;
use crate::policy_dir;

/// 2026-01-06T10:00:00Z, a Tuesday, in seconds.
const NOW: i64 = 1_767_693_600;

#[derive(serde::Deserialize)]
struct DemoData {
    principals: Vec<Principal>,
    entities: Vec<EntityRecord>,
    assignments: Vec<Assignment>,
}

/// A data plane over the demo data, configured by `sets` (`key=value`), and the key its
/// tokens are signed with.
struct Fixture {
    plane: DataPlane,
    gate: Arc<Gate>,
    key: DevKey,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(sets: &[&str], keys_loaded: bool, revoked: Vec<RevokedSession>) -> Fixture {
    // Random, not the clock: tests start together and two could read the same instant.
    let dir = std::env::temp_dir().join(format!(
        "portcullis-check-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sets: Vec<Override> = ["context.fixed_time=2026-01-06T10:00:00Z"]
        .iter()
        .chain(sets)
        .map(|s| Override::parse(s).unwrap())
        .collect();
    let config = config::load(None, Vec::new(), &sets).unwrap();

    let builtin = policy_dir::builtin().unwrap();
    let policies = portcullis_engine::policy::compile(&builtin.sources).unwrap();
    let routes_file = builtin.routes.clone().unwrap();
    let routes =
        crate::routes::compile(Path::new(&routes_file.name), &routes_file.text, &policies).unwrap();
    let demo: DemoData =
        serde_saphyr::from_str(include_str!("../../../deploy/examples/demo-data.yaml")).unwrap();
    let state = StoreState {
        revision: 1,
        principals: demo.principals,
        roles: builtin.sources.roles.clone(),
        assignments: demo.assignments,
        entities: demo.entities,
        revoked_sessions: revoked,
        template_links: Vec::new(),
        policy_set: Some(PolicySetVersion {
            version: 1,
            files: builtin.sources.files.clone(),
            schema: builtin.sources.schema.text.clone(),
            created_by: None,
            created_at: 0,
        }),
        held_entity_types: Default::default(),
    };
    let snapshot = Snapshot::build(state, NOW * 1000).unwrap();

    let (key, _) = DevKey::load_or_create(&dir).unwrap();
    let authn = Authenticator::new(
        crate::prepare::auth_settings(&config.auth, String::from(DEV_ISSUER)).unwrap(),
        100,
    );
    if keys_loaded {
        authn.set_keys(
            0,
            KeySource::Fixed(key.jwks()).load_local().unwrap().unwrap(),
        );
    }
    let metrics = Arc::new(Metrics::new());
    let gate = Arc::new(crate::prepare::gate(&config, routes, &metrics).unwrap());
    let plane = DataPlane {
        gate: arc_swap::ArcSwap::new(Arc::clone(&gate)),
        snapshot: Arc::new(SnapshotHandle::new(snapshot)),
        state_cache: None,
        authn: Arc::new(authn),
        assertion: None,
        health: Arc::new(Health::default()),
        recorder: None,
        contact: None,
        rate_limiter: super::limits::RateLimiter::new(100_000, None, false, &metrics),
        lockout: None,
        metrics,
    };
    Fixture {
        plane,
        gate,
        key,
        _dir: TempDir(dir),
    }
}

impl Fixture {
    fn token(&self, sub: &str, extra: serde_json::Value) -> String {
        let mut claims = json!({
            "iss": DEV_ISSUER, "aud": "portcullis", "sub": sub,
            "iat": NOW - 60, "exp": NOW + 3600,
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        self.key.sign(&claims).unwrap()
    }

    /// Checks `method target` with `headers` (`name: value`) as Portcullis forwarding it.
    fn check(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Verdict {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        // With the full state the check never waits: one poll finishes it.
        futures_util::FutureExt::now_or_never(self.plane.check(
            &self.gate,
            method,
            &Target { path, query },
            &map,
            super::Connection {
                peer: Some("127.0.0.1".parse().unwrap()),
                client_certificate: None,
            },
            true,
        ))
        .unwrap()
    }

    fn as_user(&self, sub: &str, method: &str, target: &str) -> Verdict {
        let bearer = format!("Bearer {}", self.token(sub, json!({})));
        self.check(method, target, &[("authorization", &bearer)])
    }
}

/// Classified (2): only from a trusted device; carol may not read it at all.
const MEDICAL: &str = "/v1/spaces/family/documents/medical";
/// Unclassified: alice (guardian of the space) and carol (its guest) may read it.
const GROCERIES: &str = "/v1/spaces/family/documents/groceries";

fn denied_reason(checked: &Verdict) -> Option<&'static str> {
    match checked.reason() {
        Some(Rejection::Denied { reason, .. }) => Some(reason),
        _ => None,
    }
}

/// What shadow mode noted instead of answering.
fn shadowed(checked: &Verdict) -> Option<&Rejection> {
    match checked {
        Verdict::Shadow { would_refuse, .. } => Some(would_refuse),
        _ => None,
    }
}

#[test]
fn screen_a_method_override_is_refused_before_anything_else() {
    let f = fixture(&[], true, Vec::new());
    let checked = f.check("POST", MEDICAL, &[("x-http-method-override", "DELETE")]);
    assert_eq!(checked.outcome(), Outcome::BadRequest);
    assert!(matches!(checked.refusal(), Some(Rejection::BadRequest(_))));
    assert_eq!(checked.route(), None);
    assert!(checked.grant().is_none() && checked.subject().is_none());
    // Counted by reason in this data plane's own registry.
    let bad = &f.plane.metrics.bad_requests;
    assert_eq!(bad.with_label_values(&["method_override"]).get(), 1);
}

#[test]
fn staleness_past_the_limit_fails_closed_even_for_a_good_token() {
    let mut f = fixture(&[], true, Vec::new());
    // Last heard from the control plane ten minutes ago; at most one minute allowed.
    f.plane.contact = Some(Arc::new(Contact::new(
        Duration::from_secs(60),
        jiff::Timestamp::now().as_millisecond() - 600_000,
    )));
    let checked = f.as_user("alice", "GET", MEDICAL);
    assert_eq!(checked.outcome(), Outcome::Unavailable);
    assert!(matches!(
        checked.refusal(),
        Some(Rejection::Unavailable("state_stale"))
    ));
    // Within the limit: decided as usual.
    f.plane.contact = Some(Arc::new(Contact::new(
        Duration::from_secs(60),
        jiff::Timestamp::now().as_millisecond(),
    )));
    assert_eq!(
        f.as_user("alice", "GET", GROCERIES).outcome(),
        Outcome::Allowed
    );
}

#[test]
fn routing_no_route_is_refused_with_the_configured_status() {
    for (sets, status) in [
        (&[][..], 403),
        (&["enforcement.unmatched_status=404"][..], 404),
    ] {
        let f = fixture(sets, true, Vec::new());
        let checked = f.as_user("alice", "GET", "/v1/nowhere");
        assert_eq!(checked.outcome(), Outcome::Unmatched);
        assert!(
            matches!(checked.refusal(), Some(Rejection::Unmatched { status: s }) if *s == status)
        );
        // The method is part of the route: a known path with another method is no route.
        assert_eq!(
            f.as_user("alice", "TRACE", MEDICAL).outcome(),
            Outcome::Unmatched
        );
    }
}

#[test]
fn routing_a_public_route_is_forwarded_without_credentials_or_decision() {
    let f = fixture(&[], false, Vec::new());
    let checked = f.check("GET", "/healthz", &[]);
    assert_eq!(checked.outcome(), Outcome::Public);
    assert!(checked.refusal().is_none() && shadowed(&checked).is_none());
    assert!(checked.grant().is_none() && checked.subject().is_none());
    assert!(checked.forwards_credential(), "the caller's own, unchecked");
    assert_eq!(f.gate.route_name(checked.route()), "healthz");
}

#[test]
fn authentication_without_keys_is_unavailable_not_unauthenticated_even_in_shadow_mode() {
    for sets in [&[][..], &["enforcement.mode=shadow"][..]] {
        let f = fixture(sets, false, Vec::new());
        let checked = f.as_user("alice", "GET", MEDICAL);
        assert_eq!(checked.outcome(), Outcome::Unavailable, "{sets:?}");
        assert!(matches!(
            checked.refusal(),
            Some(Rejection::Unavailable("keys_not_loaded"))
        ));
        assert!(shadowed(&checked).is_none());
    }
}

#[test]
fn authentication_a_missing_or_bad_token_is_refused_and_shadowed_in_shadow_mode() {
    let f = fixture(&[], true, Vec::new());
    let checked = f.check("GET", MEDICAL, &[]);
    assert_eq!(checked.outcome(), Outcome::Unauthenticated);
    assert!(matches!(
        checked.refusal(),
        Some(Rejection::Unauthenticated(_))
    ));
    let forged = format!("Bearer {}x", f.token("alice", json!({})));
    let checked = f.check("GET", MEDICAL, &[("authorization", &forged)]);
    assert!(
        matches!(
            checked.refusal(),
            Some(Rejection::Unauthenticated(
                AuthnError::BadSignature | AuthnError::Malformed
            ))
        ),
        "{:?}",
        checked.refusal()
    );
    assert!(!checked.forwards_credential());
    let jwt = &f.plane.metrics.jwt;
    assert_eq!(jwt.with_label_values(&["missing"]).get(), 1);
    assert_eq!(
        jwt.with_label_values(&["bad_signature"]).get()
            + jwt.with_label_values(&["malformed"]).get(),
        1
    );
    assert_eq!(f.plane.metrics.hot.jwt_ok.get(), 0);

    let shadow = fixture(&["enforcement.mode=shadow"], true, Vec::new());
    let checked = shadow.check("GET", MEDICAL, &[]);
    assert_eq!(checked.outcome(), Outcome::ShadowDenied);
    assert!(checked.refusal().is_none(), "shadow mode forwards");
    assert!(matches!(
        shadowed(&checked),
        Some(Rejection::Unauthenticated(_))
    ));
    assert!(checked.grant().is_none() && !checked.forwards_credential());
}

#[test]
fn revocation_a_revoked_session_is_refused_and_other_sessions_are_not() {
    let revoked = RevokedSession {
        session_id: String::from("s-stolen"),
        principal: Some(r#"User::"alice""#.parse::<EntityRef>().unwrap()),
        expires_at: (NOW + 3600) * 1000,
        issued_before: None,
    };
    let f = fixture(&[], true, vec![revoked]);
    let stolen = format!("Bearer {}", f.token("alice", json!({"sid": "s-stolen"})));
    let checked = f.check("GET", MEDICAL, &[("authorization", &stolen)]);
    assert_eq!(checked.outcome(), Outcome::Unauthenticated);
    assert!(matches!(checked.refusal(), Some(Rejection::SessionRevoked)));
    assert!(checked.grant().is_none() && !checked.forwards_credential());
    let other = format!("Bearer {}", f.token("alice", json!({"sid": "s-other"})));
    let checked = f.check("GET", GROCERIES, &[("authorization", &other)]);
    assert_eq!(checked.outcome(), Outcome::Allowed);
    // Both tokens verified once (and the revoked one refused after verification); one
    // decision evaluated.
    assert_eq!(f.plane.metrics.hot.jwt_ok.get(), 2);
    assert_eq!(f.plane.metrics.hot.decision_evaluated.get_sample_count(), 1);
}

#[test]
fn resource_resolution_an_unknown_principal_has_no_tenant_for_tenant_routes() {
    let f = fixture(&[], true, Vec::new());
    // `/v1/spaces` names the caller's tenant (`{$tenant}`): a stranger has none.
    let checked = f.as_user("stranger", "GET", "/v1/spaces");
    assert_eq!(checked.outcome(), Outcome::Denied);
    assert_eq!(denied_reason(&checked), Some("unknown_principal"));
    assert!(checked.grant().is_none(), "a refusal forwards no identity");
    assert!(checked.subject().is_none(), "no decision was made");
    // A principal the store knows has a tenant: the same route is decided for it.
    let known = f.as_user("alice", "GET", "/v1/spaces");
    assert!(known.subject().is_some(), "decided");
    assert_eq!(
        known.subject().map(|s| s.resource.as_str()),
        Some(r#"Tenant::"household""#)
    );
}

#[test]
fn decision_allowed_forwards_the_identity_with_its_roles() {
    let f = fixture(&[], true, Vec::new());
    let checked = f.as_user("alice", "GET", GROCERIES);
    assert_eq!(checked.outcome(), Outcome::Allowed);
    assert!(checked.refusal().is_none() && shadowed(&checked).is_none());
    assert!(checked.forwards_credential());
    let grant = checked.grant().unwrap();
    assert_eq!(grant.subject, "alice");
    assert_eq!(grant.principal_type, "user");
    assert_eq!(grant.tenant.as_deref(), Some("household"));
    assert_eq!(grant.roles, ["guardian"]);
    let subject = checked.subject().unwrap();
    assert_eq!(subject.action, "document.read");
    assert_eq!(subject.resource, r#"Document::"groceries""#);
    assert!(!subject.policies.is_empty());
    assert_eq!(checked.decision_id(), Some(grant.decision_id.as_str()));
    assert_eq!(f.gate.route_name(checked.route()), "get_document");
}

#[test]
fn decision_denied_is_refused_with_its_reason_and_shadowed_in_shadow_mode() {
    let f = fixture(&[], true, Vec::new());
    // Carol is a guest of the groceries list only.
    let checked = f.as_user("carol", "GET", MEDICAL);
    assert_eq!(checked.outcome(), Outcome::Denied);
    assert!(denied_reason(&checked).is_some());
    assert!(checked.grant().is_none(), "a refusal forwards no identity");
    assert!(
        checked.subject().is_some(),
        "the decision is kept for the log and audit"
    );
    assert!(checked.decision_id().is_some());
    // A suspended principal is denied whatever its roles.
    assert_eq!(
        f.as_user("mallory", "GET", MEDICAL).outcome(),
        Outcome::Denied
    );

    let shadow = fixture(&["enforcement.mode=shadow"], true, Vec::new());
    let checked = shadow.as_user("carol", "GET", MEDICAL);
    assert_eq!(checked.outcome(), Outcome::ShadowDenied);
    assert!(checked.refusal().is_none(), "shadow mode forwards");
    assert!(matches!(shadowed(&checked), Some(Rejection::Denied { .. })));
    assert!(
        checked.grant().is_some(),
        "forwarded with the verified identity"
    );
    // Shadow mode does not turn an allow into anything else.
    assert_eq!(
        shadow.as_user("alice", "GET", GROCERIES).outcome(),
        Outcome::Allowed
    );
}
