//! What reaches the upstream: only normalised targets that were authorised, and only the
//! identity headers Portcullis sets.

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream};
use crate::world;

#[test]
fn path_tricks_never_reach_a_denied_route() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));

    // Alice may read documents of s1 but not tenant t1 (her grant is on the space).
    assert_eq!(p.get("/v1/tenants/t1", Some(&alice), &[]).status, 403);
    let tricks: &[(&str, &[u16])] = &[
        ("/healthz/../v1/tenants/t1", &[403]),
        ("/v1/spaces/s1/../../v1/tenants/t1", &[403]),
        ("//v1/tenants/t1", &[403]),
        ("/v1//tenants///t1", &[403]),
        ("/v1/tenants/%74%31", &[403]),
        ("/v1/tenants/./t1", &[403]),
        ("/%2e%2e/v1/tenants/t1", &[400]),
        ("/healthz/%2e%2e/v1/tenants/t1", &[403]),
        ("/v1/tenants/t1%2F..", &[400]),
        ("/healthz%2F..%2Fv1/tenants/t1", &[400]),
        ("/v1/tenants/t1;x", &[400]),
        ("/v1/tenants/t1;jsessionid=1", &[400]),
        ("/v1/tenants/t1#x", &[400]),
        ("/v1/tenants/t1%00", &[400]),
        ("/v1/tenants\\t1", &[400]),
        ("/v1/tenants/t1%5c", &[400]),
        ("/v1/tenants/t1%zz", &[400]),
        ("http://evil.test/v1/tenants/t1", &[400]),
    ];
    for (target, statuses) in tricks {
        let id = uuid::Uuid::now_v7().to_string();
        let r = p.get(target, Some(&alice), &[("x-test-id", &id)]);
        assert!(
            statuses.contains(&r.status),
            "{target}: {} {}",
            r.status,
            r.body
        );
        assert!(
            upstream.seen_with(&id).is_empty(),
            "{target} reached the upstream"
        );
    }

    // An allowed request reaches the upstream in its normalised form, query untouched.
    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(
        "//v1/spaces/%73%31/./documents/x/../d1?a=1&b=..%2F",
        Some(&alice),
        &[("x-test-id", &id)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = upstream.seen_with(&id);
    assert_eq!(seen[0].target, "/v1/spaces/s1/documents/d1?a=1&b=..%2F");

    // Unmatched routes are refused, never forwarded.
    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get("/v1/nothing/here", Some(&alice), &[("x-test-id", &id)]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (403, Some("no_route"))
    );
    assert!(upstream.seen_with(&id).is_empty());
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let spoofed: &[(&str, &str)] = &[
        ("X-Portcullis-Subject", "mallory"),
        ("x-portcullis-subject", "mallory2"),
        ("X_Portcullis_Roles", "admin"),
        ("X.Portcullis.Tenant", "t2"),
        ("x-portcullis-decision-id", "forged"),
        ("X-Portcullis-Anything", "x"),
        ("X-Original-URL", "/v1/tenants/t1"),
        ("X-Forwarded-Uri", "/v1/tenants/t1"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Rewrite-URL", "/v1/tenants/t1"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    let mut with_id: Vec<(&str, &str)> = spoofed.to_vec();
    let id = uuid::Uuid::now_v7().to_string();
    with_id.push(("x-test-id", &id));
    let r = p.get("/v1/spaces/s1/documents/d1", Some(&alice), &with_id);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &upstream.seen_with(&id)[0];
    assert_eq!(seen.all("x-portcullis-subject"), ["alice"]);
    assert_eq!(seen.all("x-portcullis-roles"), ["guardian"]);
    assert_eq!(seen.all("x-portcullis-tenant"), ["t1"]);
    assert_ne!(seen.one("x-portcullis-decision-id"), Some("forged"));
    for (name, _) in &seen.headers {
        let canonical = name.replace(['_', '.'], "-");
        assert!(
            !canonical.starts_with("x-portcullis-anything")
                && ![
                    "x-original-url",
                    "x-forwarded-uri",
                    "x-forwarded-prefix",
                    "x-rewrite-url"
                ]
                .contains(&canonical.as_str()),
            "{name} reached the upstream"
        );
        if canonical.starts_with("x-portcullis-") {
            assert_eq!(name, &canonical, "{name}: only our own spelling");
        }
    }
    let traceparent = seen.one("traceparent").expect("traceparent");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "trace kept"
    );
    assert!(!traceparent.contains("00f067aa0ba902b7"), "new span");

    // A public route gets no identity headers at all, and loses the spoofed ones too.
    let id = uuid::Uuid::now_v7().to_string();
    let mut with_id: Vec<(&str, &str)> = spoofed.to_vec();
    with_id.push(("x-test-id", &id));
    let r = p.get("/healthz", None, &with_id);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &upstream.seen_with(&id)[0];
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.replace(['_', '.'], "-").starts_with("x-portcullis-")),
        "{:?}",
        seen.headers
    );
}

#[test]
fn edge_gateway_routes_by_host_and_prefix_and_times_out_slow_upstreams() {
    let app = Upstream::start();
    let api = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &app,
        &keys,
        &format!(
            "upstreams:\n  - name: api\n    address: {}\n    host: api.test\n    path_prefix: /v1/spaces\n  \
             - name: app\n    address: {}\n    read_timeout_ms: 300\n",
            api.addr, app.addr
        ),
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let d1 = "/v1/spaces/s1/documents/d1";

    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(
        d1,
        Some(&alice),
        &[("host", "api.test:8480"), ("x-test-id", &id)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        api.seen_with(&id).len(),
        1,
        "host api.test and /v1/spaces go to api"
    );
    assert!(app.seen_with(&id).is_empty());

    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(
        d1,
        Some(&alice),
        &[("host", "other.test"), ("x-test-id", &id)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(app.seen_with(&id).len(), 1, "another host goes to app");

    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(
        "/v1/users/alice",
        Some(&alice),
        &[("host", "api.test"), ("x-test-id", &id)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        app.seen_with(&id).len(),
        1,
        "a path outside the prefix goes to app"
    );

    let r = p.get(
        d1,
        Some(&alice),
        &[("host", "other.test"), ("x-delay-ms", "2000")],
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (502, Some("bad_gateway"))
    );
}
