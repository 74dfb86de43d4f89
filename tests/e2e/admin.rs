//! The admin API of a running `serve`: against its own OpenAPI document, with schemathesis
//! (PyPI; .ci/run installs it): generated requests for every operation must never get a
//! 5xx, and every response must match the document (status codes, content types, bodies,
//! headers). Policies written through it against the policies directory: the newer intent
//! wins, across restarts. Admin JWTs, and the throttle of failed authentications.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream, policies_dir, temp_dir};
use crate::world;

#[test]
fn the_admin_api_matches_its_openapi_document() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    // schemathesis also calls without credentials; keep the throttle out of its way.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "admin:\n  address: {admin}\n  failed_auth:\n    max_failures: 100000\n",
    );
    let token = std::fs::read_to_string(p.dir.join("data/admin-token")).expect("admin token");
    // `python3 -m schemathesis.cli` works wherever pip put the package, shims or not.
    // Run from a scratch directory: schemathesis leaves its cache (`.schemathesis/`) there.
    let out = Command::new("python3")
        .current_dir(p.dir.as_path())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/v1/openapi.json", p.admin))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            // Event streams never end: the API tests and the distribution and events e2e
            // cover them.
            "--exclude-path",
            "/v1/watch",
            "--exclude-path",
            "/v1/events/stream",
            "--max-examples",
            "40",
            "--seed",
            "20261124",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis is installed (PyPI `schemathesis`; .ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every documented operation but the two streams (`Selected: N/N+2`, `Tested: N`).
    let selected = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: "))
        .and_then(|v| v.split_once('/'))
        .and_then(|(n, total)| {
            Some((
                n.trim().parse::<usize>().ok()?,
                total.trim().parse::<usize>().ok()?,
            ))
        });
    let Some((n, total)) = selected else {
        panic!("no `Selected:` line:\n{stdout}");
    };
    assert!(
        n + 2 == total && n >= 26 && stdout.contains(&format!("Tested: {n}")),
        "every operation but the two streams was tested:\n{stdout}"
    );
}

#[test]
fn api_policies_survive_restarts_until_the_policies_directory_changes() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = temp_dir("policies");
    for entry in std::fs::read_dir(policies_dir()).expect("policies") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let mut p = Portcullis::start(
        &upstream,
        &keys,
        &format!("policies:\n  dir: {}\n", dir.display()),
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let d1 = "/v1/spaces/s1/documents/d1";
    let wait_for = |p: &Portcullis, status: u16, what: &str| {
        let started = Instant::now();
        while p.get(d1, Some(&alice), &[]).status != status {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&p, 200, "alice reads d1");

    // A quarantine policy through the API, with the ETag just read.
    let current = p.admin_call("GET", "/v1/policies", &json!({}));
    let etag = current.headers["etag"].clone();
    let mut set = current.json();
    set["files"].as_array_mut().expect("files").push(json!({
        "name": "quarantine.cedar",
        "text": "@id(\"quarantine-d1\")\nforbid(principal, action, resource == Document::\"d1\");\n"
    }));
    let r = p.admin_call_with(
        "PUT",
        "/v1/policies",
        &[("if-match", &etag)],
        &json!({"files": set["files"]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(&p, 403, "the API's policy is enforced");

    // A restart with the directory unchanged keeps it.
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10)).expect("stops");
    p.restart();
    assert_eq!(p.get(d1, Some(&alice), &[]).status, 403, "{}", p.log());
    assert_eq!(
        p.admin_call("GET", "/v1/policies", &json!({})).json()["created_by"],
        "admin"
    );

    // An edit of the directory is newer: it replaces the API's version, and says so.
    let default = dir.join("default.cedar");
    let text = std::fs::read_to_string(&default).expect("default.cedar");
    std::fs::write(&default, format!("// edited\n{text}")).expect("edit");
    p.signal("HUP");
    wait_for(&p, 200, "the directory's policies are back");
    assert!(
        p.log()
            .contains("it replaces the policy set written through the admin API"),
        "{}",
        p.log()
    );
    assert_eq!(
        p.admin_call("GET", "/v1/policies", &json!({})).json()["created_by"],
        "policies.dir"
    );
}

#[test]
fn admin_calls_are_decided_by_the_directorys_admin_policies_and_reloaded_with_them() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = temp_dir("admin-policies");
    for entry in std::fs::read_dir(policies_dir()).expect("policies") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let tokens = dir.join("admin-tokens");
    std::fs::write(
        &tokens,
        format!(
            "{}\n{} roles=tenant-admin tenant=t1\n",
            portcullis_admin_api::auth::token_line("ops", "ops-token"),
            portcullis_admin_api::auth::token_line("t1-admin", "t1-token"),
        ),
    )
    .expect("tokens");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "policies:\n  dir: {}\nadmin:\n  address: {{admin}}\n  tokens_file: {}\n",
            dir.display(),
            tokens.display()
        ),
    );
    let call = |token: &str, method: &str, target: &str, body: serde_json::Value| {
        crate::harness::json_request(
            p.admin,
            method,
            target,
            &[("authorization", &format!("Bearer {token}"))],
            &body,
        )
        .expect("the admin API answers")
    };
    let carl = json!({"kind": "user", "id": "carl", "tenant": "t1"});
    let dave = json!({"kind": "user", "id": "dave", "tenant": "t2"});
    assert_eq!(
        call("t1-token", "PUT", "/v1/principals/users/carl", carl.clone()).status,
        200
    );
    let r = call("t1-token", "PUT", "/v1/principals/users/dave", dave.clone());
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        call("ops-token", "PUT", "/v1/principals/users/dave", dave).status,
        200
    );

    // Tenant admins lose their permit: refused after the reload.
    let admin = dir.join("admin.cedar");
    let text = std::fs::read_to_string(&admin).expect("admin.cedar");
    let without = text.replace(
        "@id(\"tenant-admin-own-tenant\")\npermit",
        "@id(\"tenant-admin-own-tenant\")\nforbid",
    );
    assert_ne!(
        text, without,
        "the shipped admin.cedar has the tenant-admin permit"
    );
    std::fs::write(&admin, without).expect("edit");
    p.signal("HUP");
    let started = Instant::now();
    while call("t1-token", "PUT", "/v1/principals/users/carl", carl.clone()).status != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not reloaded:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        call("ops-token", "GET", "/v1/principals/users/carl", json!({})).status,
        200
    );

    // An admin.cedar that does not validate is refused; the last good one stays.
    std::fs::write(&admin, "permit(principal, action, resource);\n").expect("edit");
    p.signal("HUP");
    let started = Instant::now();
    while !p.log().contains("reload refused") {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        call("t1-token", "PUT", "/v1/principals/users/carl", carl).status,
        403
    );
}

#[test]
fn admin_jwts_act_within_their_claims_and_bad_credentials_are_throttled() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    // Tokens inline (as from the environment), `;` between lines: an auditor's.
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "admin:\n  address: {{admin}}\n  tokens: \"# inline; {} roles=auditor\"\n  jwt:\n    audience: portcullis-admin\n  failed_auth:\n    max_failures: 5\n    window_seconds: 60\n",
            portcullis_admin_api::auth::token_line("reader", "reader-token")
        ),
    );
    let call = |token: &str, method: &str, target: &str, body: serde_json::Value| {
        crate::harness::json_request(
            p.admin,
            method,
            target,
            &[("authorization", &format!("Bearer {token}"))],
            &body,
        )
        .expect("the admin API answers")
    };
    let admin_jwt = |subject: &str, claims: serde_json::Value| {
        let mut claims = claims;
        claims["aud"] = json!("portcullis-admin");
        keys.token(subject, claims)
    };
    let carol = admin_jwt(
        "carol",
        json!({"portcullis_admin_roles": ["tenant-admin"], "tenant": "t1"}),
    );
    let r = call(
        &carol,
        "PUT",
        "/v1/principals/users/carl",
        json!({"kind": "user", "id": "carl", "tenant": "t1"}),
    );
    assert_eq!(
        r.status, 200,
        "a tenant admin by JWT, own tenant: {}",
        r.body
    );
    let r = call(
        &carol,
        "PUT",
        "/v1/principals/users/dave",
        json!({"kind": "user", "id": "dave", "tenant": "t2"}),
    );
    assert_eq!(r.status, 403, "another tenant: {}", r.body);
    assert!(r.body.contains("jwt:carol"), "{}", r.body);
    let r = call(
        "reader-token",
        "GET",
        "/v1/audit?actor=jwt:carol",
        json!({}),
    );
    assert_eq!(r.status, 200, "an inline token: {}", r.body);
    assert_eq!(
        r.json()["items"][0]["action"],
        "principal.put",
        "carol's change, recorded as hers: {}",
        r.body
    );
    let ops = admin_jwt(
        "ops",
        json!({"portcullis_admin_roles": "auditor platform-admin"}),
    );
    assert_eq!(call(&ops, "GET", "/v1/roles", json!({})).status, 200);
    let no_roles = admin_jwt("eve", json!({}));
    assert_eq!(
        call(&no_roles, "GET", "/v1/roles", json!({})).status,
        403,
        "authenticated, permitted nothing"
    );

    // Failures: a token for the protected APIs (wrong audience), an expired admin JWT, junk.
    let mut failures = 0;
    let data_plane_token = keys.token(
        "mallory",
        json!({"portcullis_admin_roles": ["platform-admin"]}),
    );
    let expired = admin_jwt(
        "ops",
        json!({"portcullis_admin_roles": ["platform-admin"], "exp": 1_000_000, "nbf": 0}),
    );
    for bad in [
        data_plane_token.as_str(),
        expired.as_str(),
        "junk",
        "a.b.c",
        "x",
    ] {
        let r = call(bad, "GET", "/v1/roles", json!({}));
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        failures += 1;
    }
    // Over the limit: further failures from this address wait, told for how long...
    let r = call("junk", "GET", "/v1/roles", json!({}));
    assert_eq!(r.status, 429, "after {failures} failures: {}", r.body);
    let retry_after: u64 = r.headers["retry-after"].parse().expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        r.json()["type"],
        "https://portcullis.dev/problems/too-many-failed-authentications"
    );
    let r = call("", "GET", "/v1/roles", json!({}));
    assert_eq!(r.status, 429, "no credential at all: {}", r.body);
    // ...but credentials that verify, from the same address, are never locked out.
    for good in [ops.as_str(), "reader-token"] {
        let r = call(good, "GET", "/v1/roles", json!({}));
        assert_eq!(
            r.status, 200,
            "a valid credential while throttled: {}",
            r.body
        );
    }
    let metrics = p.metrics_text();
    for (reason, at_least) in [("invalid", failures), ("throttled", 1)] {
        let line = format!("portcullis_admin_auth_failures_total{{reason=\"{reason}\"}} ");
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{line}` in\n{metrics}"));
        assert!(value >= at_least, "{line}{value}");
    }
}
