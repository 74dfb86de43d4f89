//! Decisions through the proxy: roles, scope inheritance, every default ABAC rule, account
//! status, revoked sessions, and what the upstream is told about an allowed request.

use serde_json::json;

use crate::harness::{Keys, Portcullis, Reply, Upstream, raw_request_from};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";
const SECRET: &str = "/v1/spaces/s1/documents/secret";

fn expect_status(case: &str, reply: &Reply, status: u16) {
    assert_eq!(
        reply.status, status,
        "{case}: {} {}",
        reply.status, reply.body
    );
}

/// A 403 decided by exactly these policies (read from the decision log).
fn expect_denied_by(case: &str, p: &Portcullis, reply: &Reply, policies: &[&str]) {
    expect_status(case, reply, 403);
    let body = reply.json();
    assert_eq!(body["error"], "forbidden", "{case}: {body}");
    let id = body["decision_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no decision id: {body}"));
    assert_eq!(
        reply
            .headers
            .get("x-portcullis-decision-id")
            .map(String::as_str),
        Some(id),
        "{case}"
    );
    assert_eq!(p.decided_by(id), policies, "{case}");
}

fn expect_reason(case: &str, reply: &Reply, status: u16, reason: &str) {
    expect_status(case, reply, status);
    assert_eq!(reply.json()["reason"], reason, "{case}: {}", reply.body);
}

#[test]
fn decisions_follow_roles_scopes_and_abac_rules() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let t = |sub: &str| keys.token(sub, json!({}));

    // Allowed: the upstream gets the request with the identity Portcullis vouches for.
    let id = uuid::Uuid::now_v7().to_string();
    let alice = t("alice");
    let r = p.get(D1, Some(&alice), &[("x-test-id", &id)]);
    expect_status("guardian reads a document of her space", &r, 200);
    let seen = upstream.seen_with(&id);
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.target, D1);
    assert_eq!(s.one("x-portcullis-subject"), Some("alice"));
    assert_eq!(s.one("x-portcullis-principal-type"), Some("user"));
    assert_eq!(s.one("x-portcullis-tenant"), Some("t1"));
    assert_eq!(s.one("x-portcullis-roles"), Some("guardian"));
    assert!(
        s.one("x-portcullis-decision-id")
            .is_some_and(|d| d.len() == 36)
    );
    let traceparent = s.one("traceparent").expect("traceparent created");
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent}"
    );
    assert_eq!(
        s.one("authorization"),
        Some(format!("Bearer {alice}").as_str())
    );

    // Roles and scopes.
    expect_status(
        "guest of a space reads its documents (inherited)",
        &p.get(D1, Some(&t("gina")), &[]),
        200,
    );
    expect_reason(
        "a guest does not write",
        &p.request("PUT", D1, Some(&t("gina")), &[]),
        403,
        "no_permit",
    );
    expect_status(
        "guest of one document reads it",
        &p.get(D1, Some(&t("dora")), &[]),
        200,
    );
    expect_reason(
        "a document grant does not leak to its sibling",
        &p.get("/v1/spaces/s1/documents/d2", Some(&t("dora")), &[]),
        403,
        "no_permit",
    );
    expect_reason(
        "a grant on s1 does not cover s2",
        &p.get("/v1/spaces/s2", Some(&alice), &[]),
        403,
        "no_permit",
    );
    expect_reason(
        "the path may not move a document into another space",
        &p.get("/v1/spaces/s2/documents/d1", Some(&alice), &[]),
        403,
        "resource_parent_mismatch",
    );
    expect_reason(
        "a principal the store does not know",
        &p.get(D1, Some(&t("nobody")), &[]),
        403,
        "unknown_principal",
    );
    let billing = keys.token("billing", json!({"gty": "client-credentials"}));
    let id = uuid::Uuid::now_v7().to_string();
    expect_status(
        "a service (client-credentials token) with the service role",
        &p.get(D1, Some(&billing), &[("x-test-id", &id)]),
        200,
    );
    let s = &upstream.seen_with(&id)[0];
    assert_eq!(s.one("x-portcullis-principal-type"), Some("service"));
    assert_eq!(s.one("x-portcullis-roles"), Some("service"));

    // Every default ABAC rule, denied and allowed.
    let r = p.get(D1, Some(&t("sam")), &[]);
    expect_denied_by("a suspended account", &p, &r, &["status-not-active"]);
    let r = p.get(D1, Some(&t("tom")), &[]);
    expect_denied_by("an admin of another tenant", &p, &r, &["tenant-isolation"]);
    let r = p.request("DELETE", "/v1/spaces/s1", Some(&alice), &[]);
    expect_denied_by(
        "an admin action without MFA",
        &p,
        &r,
        &["admin-requires-mfa"],
    );
    let alice_mfa = keys.token("alice", json!({"amr": ["pwd", "otp"]}));
    expect_status(
        "the same admin action with MFA",
        &p.request("DELETE", "/v1/spaces/s1", Some(&alice_mfa), &[]),
        200,
    );
    let risky = keys.token("alice", json!({"risk_score": 80}));
    let r = p.get(D1, Some(&risky), &[]);
    expect_denied_by("risk claim at 80", &p, &r, &["risk-too-high"]);
    let r = p.get(D1, Some(&alice), &[("x-risk-score", "85")]);
    expect_denied_by("risk header from a trusted hop", &p, &r, &["risk-too-high"]);
    let untrusted = raw_request_from(
        Some("127.0.0.2".parse().expect("ip")),
        p.data,
        "GET",
        D1,
        &[
            ("authorization", &format!("Bearer {alice}")),
            ("x-risk-score", "85"),
        ],
    )
    .expect("answer from 127.0.0.2");
    expect_status(
        "a risk header from an untrusted peer is ignored",
        &untrusted,
        200,
    );
    let laptop = keys.token("alice", json!({"device_id": "laptop-1"}));
    expect_status(
        "classified document from a trusted device",
        &p.get(SECRET, Some(&laptop), &[]),
        200,
    );
    let kiosk = keys.token("alice", json!({"device_id": "kiosk"}));
    let r = p.get(SECRET, Some(&kiosk), &[]);
    expect_denied_by(
        "classified document from an unknown device",
        &p,
        &r,
        &["classified-needs-trusted-device"],
    );
    let carl = keys.token("carl", json!({"device_id": "laptop-9"}));
    let r = p.get(SECRET, Some(&carl), &[]);
    expect_denied_by(
        "clearance below classification",
        &p,
        &r,
        &["clearance-below-classification"],
    );
    let r = p.get("/v1/spaces/old/documents/od", Some(&alice), &[]);
    expect_denied_by(
        "a document in an archived space",
        &p,
        &r,
        &["archived-resource"],
    );
    expect_status(
        "a sensitive action inside working hours (clock pinned to Tuesday 10:00)",
        &p.request("DELETE", "/v1/spaces/s1/documents/d2", Some(&alice), &[]),
        200,
    );
    expect_status(
        "a manager reads a report",
        &p.get("/v1/users/bob", Some(&t("mia")), &[]),
        200,
    );
    expect_reason(
        "a report does not read the manager",
        &p.get("/v1/users/mia", Some(&t("bob")), &[]),
        403,
        "no_permit",
    );
    expect_status(
        "everyone reads themselves",
        &p.get("/v1/users/bob", Some(&t("bob")), &[]),
        200,
    );
    expect_status(
        "only the direct manager approves",
        &p.request("POST", "/v1/users/bob/approvals", Some(&t("mia")), &[]),
        200,
    );
}

#[test]
fn revoked_sessions_and_status_changes_apply_without_restart() {
    use portcullis_model::{PrincipalStatus, RevokedSession};
    use portcullis_store::Store;

    let upstream = Upstream::start();
    let keys = Keys::generate();
    // The wall clock, which the admin API's revoke-all cutoff is taken on too.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "context:\n  trusted_hops: [127.0.0.1/32]\n",
    );
    p.seed(world::import());
    let store = p.store();
    let rt = crate::harness::rt();

    let session = keys.token("alice", json!({"sid": "sess-1"}));
    let other = keys.token("alice", json!({"sid": "sess-2"}));
    expect_status("before revocation", &p.get(D1, Some(&session), &[]), 200);
    let revision = rt
        .block_on(store.revoke_session(&RevokedSession {
            session_id: String::from("sess-1"),
            principal: None,
            expires_at: jiff::Timestamp::now().as_millisecond() + 3_600_000,
            issued_before: None,
        }))
        .expect("revoke");
    p.wait_revision(revision);
    let r = p.get(D1, Some(&session), &[]);
    expect_reason(
        "a revoked session, even from the token cache",
        &r,
        401,
        "session_revoked",
    );
    assert!(
        r.headers["www-authenticate"].contains("error=\"invalid_token\""),
        "{:?}",
        r.headers
    );
    expect_status(
        "another session of the same user",
        &p.get(D1, Some(&other), &[]),
        200,
    );

    // Signing alice out everywhere through the admin API: every token issued before (and
    // every token without `iat`) is refused; a token issued afterwards passes.
    let mut without_iat = Keys::claims("alice", json!({}));
    without_iat.as_object_mut().expect("claims").remove("iat");
    let without_iat = keys.rs256(&without_iat);
    let r = p.admin_call(
        "POST",
        "/v1/principals/users/alice/sessions:revoke",
        &json!({"all": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    p.wait_revision(r.json()["revision"].as_i64().expect("revision"));
    expect_reason(
        "issued before all sessions were revoked",
        &p.get(D1, Some(&other), &[]),
        401,
        "session_revoked",
    );
    expect_reason(
        "no iat once all sessions were revoked",
        &p.get(D1, Some(&without_iat), &[]),
        401,
        "session_revoked",
    );
    // Issuers' clocks may run ahead by the leeway (30 s): a token that says it was issued
    // within it after the cutoff may predate it, and is refused too; one issued later
    // passes. Two seconds on, `now + 29` is past the cutoff by more than the leeway.
    let just_after = keys.token(
        "alice",
        json!({"iat": jiff::Timestamp::now().as_second() + 1}),
    );
    expect_reason(
        "iat within the leeway after the cutoff",
        &p.get(D1, Some(&just_after), &[]),
        401,
        "session_revoked",
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let signed_in_again = keys.token(
        "alice",
        json!({"iat": jiff::Timestamp::now().as_second() + 29}),
    );
    expect_status(
        "signed in again after the revocation",
        &p.get(D1, Some(&signed_in_again), &[]),
        200,
    );

    let mut alice = world::user("alice", "t1");
    alice.status = PrincipalStatus::Suspended;
    alice.attributes.clearance = 3;
    let revision = rt.block_on(store.put_principal(&alice)).expect("suspend");
    p.wait_revision(revision);
    let r = p.get(D1, Some(&signed_in_again), &[]);
    expect_denied_by(
        "suspended after the token was issued",
        &p,
        &r,
        &["status-not-active"],
    );
}

#[test]
fn admin_api_changes_are_enforced_without_restart() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let zoe = keys.token("zoe", json!({}));
    let r = p.admin_call(
        "PUT",
        "/v1/principals/users/zoe",
        &json!({"kind": "user", "id": "zoe", "tenant": "t1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let unauthorised =
        crate::harness::json_request(p.admin, "GET", "/v1/roles", &[], &json!({})).expect("answer");
    assert_eq!(unauthorised.status, 401);

    // Each grant and revocation through the API reaches the data plane; time it.
    let mut propagation = Vec::new();
    for i in 0..10 {
        let id = format!("zoe-{i}");
        let r = p.admin_call(
            "POST",
            "/v1/assignments",
            &json!({"id": id, "principal": "User::\"zoe\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let started = std::time::Instant::now();
        while p.get(D1, Some(&zoe), &[]).status != 200 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "grant {i} not enforced"
            );
        }
        propagation.push(started.elapsed());
        let r = p.admin_call("DELETE", &format!("/v1/assignments/{id}"), &json!({}));
        assert_eq!(r.status, 204, "{}", r.body);
        let started = std::time::Instant::now();
        while p.get(D1, Some(&zoe), &[]).status != 403 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "revocation {i} not enforced"
            );
        }
        propagation.push(started.elapsed());
    }
    propagation.sort();
    eprintln!(
        "admin API → data plane, 20 changes: p50 {:?}, max {:?}",
        propagation[10], propagation[19]
    );
    assert!(propagation[19] < std::time::Duration::from_secs(2));
}
