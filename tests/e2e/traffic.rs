//! Traffic protection through the real binary: route rate limits (counted in the process,
//! and shared by two proxies through a real Redis) and the brute-force lockout.

use std::time::Duration;

use portcullis_sinks::testing::{RedisServer, free_port};
use serde_json::json;

use crate::harness::{Keys, Portcullis, Reply, Upstream, edit, policies_copy, raw_request_from};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

/// A copy of the policies whose `get_document` route has `limit` (YAML flow mapping) and
/// whose public `healthz` route has `public_limit`, if given.
fn limited_policies(tag: &str, limit: &str, public_limit: Option<&str>) -> std::path::PathBuf {
    let dir = policies_copy(tag);
    edit(
        &dir,
        "routes.yaml",
        "    parents: [\"Space::{space}\"]\n    band: AMBER\n",
        &format!("    parents: [\"Space::{{space}}\"]\n    band: AMBER\n    rate_limit: {limit}\n"),
    );
    if let Some(public_limit) = public_limit {
        edit(
            &dir,
            "routes.yaml",
            "    path: /healthz\n    public: true\n",
            &format!("    path: /healthz\n    public: true\n    rate_limit: {public_limit}\n"),
        );
    }
    dir
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.headers.get(name).map_or("", String::as_str)
}

#[test]
fn a_rate_limit_answers_429_with_its_headers_and_lets_the_caller_in_again_after_the_wait() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = limited_policies(
        "rate-limit",
        "{ requests: 2, per: 2s, by: principal }",
        Some("{ requests: 1, per: 1m, by: client }"),
    );
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("policies:\n  dir: {}\n", dir.display()),
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));

    // Two at once, and the headers say what is left.
    let first = p.get(D1, Some(&alice), &[("x-test-id", "allowed")]);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        "\"get_document\";q=2;w=2"
    );
    assert_eq!(header(&first, "ratelimit"), "\"get_document\";r=1;t=1");
    let second = p.get(D1, Some(&alice), &[("x-test-id", "allowed")]);
    assert_eq!(second.status, 200);
    assert_eq!(header(&second, "ratelimit"), "\"get_document\";r=0;t=2");

    // The third is refused before the decision, as JSON, with when to come back.
    let third = p.get(D1, Some(&alice), &[("x-test-id", "limited")]);
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(
        third.json(),
        json!({"error": "too_many_requests", "reason": "rate_limited"})
    );
    assert_eq!(header(&third, "content-type"), "application/json");
    assert_eq!(header(&third, "retry-after"), "1");
    assert_eq!(
        header(&third, "ratelimit-policy"),
        "\"get_document\";q=2;w=2"
    );
    assert_eq!(header(&third, "ratelimit"), "\"get_document\";r=0;t=1");
    assert_eq!(upstream.seen_with("allowed").len(), 2);
    assert!(
        upstream.seen_with("limited").is_empty(),
        "the refused request did not reach the upstream"
    );

    // Counted per principal: dora (a guest on d1) has her own bucket.
    let dora = keys.token("dora", json!({}));
    assert_eq!(p.get(D1, Some(&dora), &[]).status, 200);

    // After the wait, alice is let in again.
    std::thread::sleep(Duration::from_secs(1) + Duration::from_millis(100));
    assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);

    // Audited and counted.
    p.wait_for(
        || {
            p.audit_records()
                .iter()
                .any(|r| r["reason"] == "rate_limited" && r["route"] == "get_document")
        },
        "the refusal in the audit ledger",
    );
    p.wait_for(
        || {
            p.metric(
                "portcullis_requests_total",
                &[("route", "get_document"), ("outcome", "rate_limited")],
            ) == Some(1.0)
        },
        "the refusal counted for its route",
    );
    assert_eq!(
        p.metric(
            "portcullis_rate_limit_checks_total",
            &[("store", "local"), ("result", "limited")]
        ),
        Some(1.0)
    );

    // A public route counted by client address: 127.0.0.1 has had its one, 127.0.0.2 not.
    assert_eq!(p.get("/healthz", None, &[]).status, 200);
    let again = p.get("/healthz", None, &[]);
    assert_eq!(again.status, 429, "{}", again.body);
    assert_eq!(header(&again, "ratelimit-policy"), "\"healthz\";q=1;w=60");
    let other = raw_request_from(
        Some("127.0.0.2".parse().expect("ip")),
        p.data,
        "GET",
        "/healthz",
        &[],
    )
    .expect("an answer");
    assert_eq!(other.status, 200, "another client has its own bucket");
}

#[test]
fn a_shared_limit_is_counted_by_two_proxies_together_in_redis_and_locally_when_it_is_away() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let redis = RedisServer::start(free_port());
    let dir = limited_policies(
        "shared-limit",
        "{ requests: 3, per: 1m, by: principal, shared: true }",
        None,
    );
    let config = format!(
        "policies:\n  dir: {}\nrate_limits:\n  redis:\n    url: {}\n    timeout_ms: 200\n",
        dir.display(),
        redis.url()
    );
    let one = Portcullis::start(&upstream, &keys, &config);
    let two = Portcullis::start(&upstream, &keys, &config);
    one.seed(world::import());
    two.seed(world::import());
    let alice = keys.token("alice", json!({}));

    // Three a minute for alice, wherever she is sent.
    assert_eq!(one.get(D1, Some(&alice), &[]).status, 200);
    assert_eq!(two.get(D1, Some(&alice), &[]).status, 200);
    let third = one.get(D1, Some(&alice), &[]);
    assert_eq!(third.status, 200);
    assert_eq!(header(&third, "ratelimit"), "\"get_document\";r=0;t=60");
    let fourth = two.get(D1, Some(&alice), &[]);
    assert_eq!(fourth.status, 429, "{}", fourth.body);
    let wait: u64 = header(&fourth, "retry-after").parse().expect("Retry-After");
    assert!((19..=20).contains(&wait), "one more in 20 s, not {wait}");
    assert_eq!(
        two.metric(
            "portcullis_rate_limit_checks_total",
            &[("store", "shared"), ("result", "limited")]
        ),
        Some(1.0)
    );

    // Redis away: each proxy counts on its own against the same limit: requests are still
    // decided (never a 503), and limited again past three at one proxy.
    drop(redis);
    let statuses: Vec<u16> = (0..4)
        .map(|_| one.get(D1, Some(&alice), &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", one.log());
    assert_eq!(
        one.metric(
            "portcullis_rate_limit_checks_total",
            &[("store", "fallback"), ("result", "limited")]
        ),
        Some(1.0)
    );
    assert!(
        one.log().contains("Redis is away"),
        "the fallback is said in the log"
    );
}

#[test]
fn bad_tokens_lock_out_their_address_and_subject_but_never_a_good_token() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "lockout:\n  max_failures: 3\n  window_seconds: 60\n  cool_down_seconds: 120\n",
    );
    p.seed(world::import());
    // Signed by a key Portcullis does not trust, in alice's name.
    let forged = Keys::generate().token("alice", json!({}));
    for _ in 0..3 {
        let r = p.get(D1, Some(&forged), &[]);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let locked = p.get(D1, Some(&forged), &[]);
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert_eq!(
        locked.json(),
        json!({"error": "too_many_requests", "reason": "locked_out"})
    );
    let wait: u64 = header(&locked, "retry-after").parse().expect("Retry-After");
    assert!((119..=120).contains(&wait), "{wait}");

    // A good token from the same address is decided as always.
    let alice = keys.token("alice", json!({}));
    assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
    let dora = keys.token("dora", json!({}));
    assert_eq!(p.get(D1, Some(&dora), &[]).status, 200);
    // No credential at all is no guess: still 401 from the locked-out address.
    assert_eq!(p.get(D1, None, &[]).status, 401);

    // The subject is locked out too: a forged token in alice's name from elsewhere.
    let forged_auth = format!("Bearer {forged}");
    let elsewhere = raw_request_from(
        Some("127.0.0.2".parse().expect("ip")),
        p.data,
        "GET",
        D1,
        &[("authorization", &forged_auth)],
    )
    .expect("an answer");
    assert_eq!(elsewhere.status, 429, "{}", elsewhere.body);
    // Another bad token from elsewhere in another name is only refused.
    let other_auth = format!("Bearer {}", Keys::generate().token("mia", json!({})));
    let other = raw_request_from(
        Some("127.0.0.3".parse().expect("ip")),
        p.data,
        "GET",
        D1,
        &[("authorization", &other_auth)],
    )
    .expect("an answer");
    assert_eq!(other.status, 401);

    assert_eq!(
        p.metric("portcullis_lockouts_total", &[("key", "client")]),
        Some(1.0)
    );
    assert_eq!(
        p.metric("portcullis_lockouts_total", &[("key", "subject")]),
        Some(1.0)
    );
    p.wait_for(
        || {
            p.metric(
                "portcullis_requests_total",
                &[("route", "get_document"), ("outcome", "locked_out")],
            ) == Some(2.0)
        },
        "lockout refusals counted",
    );
    p.wait_for(
        || {
            p.audit_records()
                .iter()
                .filter(|r| r["reason"] == "locked_out")
                .count()
                == 2
        },
        "lockout refusals in the audit ledger",
    );
}

#[test]
fn a_cors_preflight_is_answered_without_credentials_and_the_actual_request_is_still_decided() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = policies_copy("cors");
    edit(
        &dir,
        "routes.yaml",
        "    parents: [\"Space::{space}\"]\n    band: AMBER\n",
        "    parents: [\"Space::{space}\"]\n    band: AMBER\n    cors: { origins: [\"https://app.example.com\"], headers: [authorization], credentials: true, max_age_seconds: 60 }\n",
    );
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("policies:\n  dir: {}\n", dir.display()),
    );
    p.seed(world::import());
    let app = ("origin", "https://app.example.com");
    let preflight = |origin: &str, method: &str, headers: &str, target: &str| {
        p.request(
            "OPTIONS",
            target,
            None,
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", headers),
                ("x-test-id", "preflight"),
            ],
        )
    };

    // Answered by Portcullis, without a token.
    let ok = preflight(app.1, "GET", "authorization", D1);
    assert_eq!(ok.status, 204, "{}", ok.body);
    for (name, value) in [
        ("access-control-allow-origin", "https://app.example.com"),
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET"),
        ("access-control-allow-headers", "authorization"),
        ("access-control-max-age", "60"),
        ("vary", "Origin"),
    ] {
        assert_eq!(header(&ok, name), value, "{name}");
    }
    // Refused: another origin, a method or header the route does not allow, a route
    // without a policy. No allow headers, so the browser stops there.
    for (origin, method, headers, target) in [
        ("https://evil.example", "GET", "authorization", D1),
        (app.1, "DELETE", "authorization", D1),
        (app.1, "GET", "x-admin", D1),
        (app.1, "GET", "authorization", "/v1/tenants/t1"),
    ] {
        let refused = preflight(origin, method, headers, target);
        assert_eq!(refused.status, 403, "{origin} {method} {headers} {target}");
        assert_eq!(
            refused.json(),
            json!({"error": "forbidden", "reason": "cors_refused"})
        );
        assert!(!refused.headers.contains_key("access-control-allow-origin"));
    }
    assert!(
        upstream.seen_with("preflight").is_empty(),
        "no preflight is forwarded"
    );

    // The actual request is decided as any other; an allowed origin may read the answer.
    let alice = keys.token("alice", json!({}));
    let allowed = p.get(D1, Some(&alice), &[app]);
    assert_eq!(allowed.status, 200);
    assert_eq!(header(&allowed, "access-control-allow-origin"), app.1);
    assert_eq!(header(&allowed, "access-control-allow-credentials"), "true");
    assert_eq!(header(&allowed, "vary"), "Origin");
    let mia = keys.token("mia", json!({}));
    let denied = p.get(D1, Some(&mia), &[app]);
    assert_eq!(denied.status, 403, "mia has no grant on d1");
    assert_eq!(header(&denied, "access-control-allow-origin"), app.1);
    let anonymous = p.get(D1, None, &[app]);
    assert_eq!(anonymous.status, 401, "the preflight is no credential");
    assert_eq!(header(&anonymous, "access-control-allow-origin"), app.1);
    let elsewhere = p.get(D1, Some(&alice), &[("origin", "https://evil.example")]);
    assert_eq!(
        elsewhere.status, 200,
        "CORS is the browser's; the decision is ours"
    );
    assert!(
        !elsewhere
            .headers
            .contains_key("access-control-allow-origin")
    );

    p.wait_for(
        || {
            p.metric(
                "portcullis_requests_total",
                &[("route", "get_document"), ("outcome", "preflight")],
            ) == Some(1.0)
        },
        "the preflight counted for its route",
    );
}
