//! Lifecycle events through the real binary: sent to `POST /v1/events` of `serve`, each
//! enforced by the data plane within moments, without a restart.

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[test]
fn events_change_what_is_enforced_within_moments() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let send = |event: serde_json::Value| {
        let r = p.admin_call("POST", "/v1/events", &event);
        assert_eq!(r.status, 200, "{event}: {}", r.body);
        assert_eq!(r.json()["outcome"], "applied", "{}", r.body);
    };

    // USER_ROLE_ASSIGNED: the request that was refused is forwarded.
    let mia = keys.token("mia", json!({}));
    assert_eq!(p.get(D1, Some(&mia), &[]).status, 403);
    send(json!({"topic": "USER_ROLE_ASSIGNED@1.0", "payload": {
        "assignment_id": "ev-mia-guest", "user_id": "mia", "role_name": "guest",
        "scope": {"type": "space", "space_id": "s1"}, "assigned_ts": now()}}));
    p.wait_for(
        || p.get(D1, Some(&mia), &[]).status == 200,
        "mia reads d1 after the role event",
    );

    // user.session_revoked: that session's token is refused, another one is not.
    let session = keys.token("alice", json!({"sid": "sess-ev"}));
    let other = keys.token("alice", json!({"sid": "sess-other"}));
    assert_eq!(p.get(D1, Some(&session), &[]).status, 200);
    send(
        json!({"id": "evt-revoke-1", "type": "user.session_revoked", "timestamp": now(),
        "userId": "alice", "data": {"userId": "alice", "sessionId": "sess-ev",
        "expiresAt": (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string()}}),
    );
    p.wait_for(
        || p.get(D1, Some(&session), &[]).status == 401,
        "the revoked session is refused",
    );
    assert_eq!(
        p.get(D1, Some(&session), &[]).json()["reason"],
        "session_revoked"
    );
    assert_eq!(p.get(D1, Some(&other), &[]).status, 200);

    // USER_STATUS_CHANGED to suspended: the user's next request is denied.
    send(json!({"topic": "USER_STATUS_CHANGED@1.0", "payload": {
        "user_id": "alice", "previous_status": "active", "new_status": "suspended",
        "changed_ts": now()}}));
    p.wait_for(
        || p.get(D1, Some(&other), &[]).status == 403,
        "a suspended user is denied",
    );

    // A poison message is answered 422 and kept.
    let r = p.admin_call(
        "POST",
        "/v1/events",
        &json!({"id": "x", "type": "user.teleported", "timestamp": now()}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let letters = p.admin_call("GET", "/v1/events/dead-letters", &json!({}));
    assert_eq!(letters.status, 200, "{}", letters.body);
    assert_eq!(letters.json()["items"][0]["event_id"], "x");
    let counted = |outcome: &str| {
        p.metric(
            "portcullis_events_total",
            &[("source", "http"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(counted("applied"), 3.0);
    assert_eq!(counted("dead_lettered"), 1.0);
}
