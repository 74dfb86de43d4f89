//! What reaches the upstream: only normalised targets that were authorised, and only the
//! identity headers Portcullis sets.

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream, edit, policies_copy};
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
    // An upstream silent past its read timeout is a gateway timeout, not a failure.
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (504, Some("gateway_timeout"))
    );
}

/// A route's own context attributes, declared in the schema and used by a policy with no
/// code change: a header counts only from a trusted hop, a claim and a query parameter
/// count as sent, and a value not of the schema's type is refused before any decision.
#[test]
fn context_attributes_come_from_headers_of_trusted_hops_claims_and_the_query() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = policies_copy("context-policies");
    let edit = |file: &str, from: &str, to: &str| edit(&dir, file, from, to);
    edit(
        "schema.cedarschema",
        "  device_id?: String,\n",
        "  device_id?: String,\n  tier?: String,\n  plan?: String,\n  limit?: Long,\n",
    );
    edit(
        "routes.yaml",
        "    parents: [\"Space::{space}\"]\n    band: AMBER\n",
        "    parents: [\"Space::{space}\"]\n    band: AMBER\n    context:\n      tier: { header: x-customer-tier }\n      plan: { claim: /subscription/plan }\n      limit: { query: limit }\n",
    );
    std::fs::write(
        dir.join("tiers.cedar"),
        "@id(\"gold-reads\")\npermit (principal, action == Action::\"document.read\", resource)\nwhen { context has tier && context.tier == \"gold\" };\n\
         @id(\"pro-reads\")\npermit (principal, action == Action::\"document.read\", resource)\nwhen { context has plan && context.plan == \"pro\" };\n",
    )
    .expect("policy");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("policies:\n  dir: {}\n", dir.display()),
    );
    p.seed(world::import());
    let d1 = "/v1/spaces/s1/documents/d1";
    // mia is of t1 with no role: only the new policies can let her read.
    let mia = keys.token("mia", json!({}));
    assert_eq!(p.get(d1, Some(&mia), &[]).status, 403);

    // 127.0.0.1 is a trusted hop here; 127.0.0.2 is not.
    let gold = [("x-customer-tier", "gold")];
    let r = p.get(d1, Some(&mia), &gold);
    assert_eq!(r.status, 200, "{}", r.body);
    let auth = format!("Bearer {mia}");
    let untrusted = crate::harness::raw_request_from(
        Some("127.0.0.2".parse().expect("ip")),
        p.data,
        "GET",
        d1,
        &[("authorization", &auth), ("x-customer-tier", "gold")],
    )
    .expect("an answer");
    assert_eq!(
        untrusted.status, 403,
        "a header from an untrusted peer is not read"
    );
    assert_eq!(
        p.get(d1, Some(&mia), &[("x-customer-tier", "silver")])
            .status,
        403
    );

    // From the verified token's claims.
    let pro = keys.token("mia", json!({"subscription": {"plan": "pro"}}));
    assert_eq!(p.get(d1, Some(&pro), &[]).status, 200);

    // Typed by the schema: a `limit` that is not a Long is refused as input, and so is one
    // given twice; a good one is decided.
    let refused = p.get(&format!("{d1}?limit=ten"), Some(&mia), &gold);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["reason"], "bad_context");
    assert_eq!(
        p.get(&format!("{d1}?limit=1&limit=2"), Some(&mia), &gold)
            .status,
        400
    );
    assert_eq!(
        p.get(&format!("{d1}?limit=10"), Some(&mia), &gold).status,
        200
    );
    assert_eq!(
        p.metric(
            "portcullis_bad_requests_total",
            &[("reason", "bad_context")]
        ),
        Some(2.0)
    );
}

/// Attributes the schema declares beyond the built-in ones: written through the admin API
/// (each checked against the schema, every failing one listed), read by a policy, with no
/// code change.
#[test]
fn a_custom_attribute_added_to_the_schema_is_written_checked_and_decided_on() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = policies_copy("custom-attributes");
    edit(
        &dir,
        "schema.cedarschema",
        "  gdpr_consent: Bool,\n",
        "  gdpr_consent: Bool,\n  cost_center?: String,\n  projects?: Set<String>,\n",
    );
    edit(
        &dir,
        "schema.cedarschema",
        "entity Document in [Space, Tenant] {\n",
        "entity Document in [Space, Tenant] {\n  project?: String,\n",
    );
    std::fs::write(
        dir.join("projects.cedar"),
        "@id(\"project-members-read\")\npermit (principal is User, action == Action::\"document.read\", resource)\n\
         when { principal has projects && resource has project && principal.projects.contains(resource.project)\n\
         && principal has cost_center && principal.cost_center == \"4711\" };\n",
    )
    .expect("policy");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("policies:\n  dir: {}\n", dir.display()),
    );
    p.seed(world::import());
    let d1 = "/v1/spaces/s1/documents/d1";
    let mia = keys.token("mia", json!({}));
    assert_eq!(p.get(d1, Some(&mia), &[]).status, 403, "mia has no role");

    // Every attribute the schema does not allow is listed, and nothing is written.
    let bad = p.admin_call(
        "PUT",
        "/v1/principals/users/mia",
        &json!({"kind": "user", "id": "mia", "tenant": "t1",
            "attributes": {"cost_center": 4711, "colour": "blue", "managers": [], "projects": ["apollo"]}}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let mut fields: Vec<String> = bad.json()["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field").to_owned())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "attributes.colour",
            "attributes.cost_center",
            "attributes.managers"
        ],
        "{}",
        bad.body
    );
    assert_eq!(p.get(d1, Some(&mia), &[]).status, 403);

    // Written as the schema says: the policy reads them.
    let r = p.admin_call(
        "PUT",
        "/v1/principals/users/mia",
        &json!({"kind": "user", "id": "mia", "tenant": "t1",
            "attributes": {"cost_center": "4711", "projects": ["apollo", "gemini"]}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["attributes"]["projects"],
        json!(["apollo", "gemini"])
    );
    let r = p.admin_call(
        "PUT",
        "/v1/entities/Document/d1",
        &json!({"uid": "Document::\"d1\"", "parents": ["Space::\"s1\""],
            "attributes": {"tenant": "t1", "classification": 0, "project": "apollo"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    p.wait_for(
        || p.get(d1, Some(&mia), &[]).status == 200,
        "mia reads a document of her project",
    );
    // Another project's document: still refused.
    assert_eq!(
        p.get("/v1/spaces/s1/documents/d2", Some(&mia), &[]).status,
        403
    );
}

/// Cleartext HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`), beside
/// HTTP/1.1 on the same port: decided like any request, allowed ones forwarded to the
/// (HTTP/1.1) upstream, refusals answered as HTTP/2 with their JSON body.
#[test]
fn http2_with_prior_knowledge_is_decided_like_http1() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let d1 = format!("http://{}/v1/spaces/s1/documents/d1", p.data);
    let curl = |token: &str, id: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-w",
                "\n%{http_version} %{http_code}",
                "-H",
                &format!("authorization: Bearer {token}"),
                "-H",
                &format!("x-test-id: {id}"),
                &d1,
            ])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let (body, status) = text.rsplit_once('\n').expect("status line");
        (status.to_owned(), body.to_owned())
    };
    let alice = keys.token("alice", json!({}));
    let id = uuid::Uuid::now_v7().to_string();
    let (status, _) = curl(&alice, &id);
    assert_eq!(status, "2 200");
    let seen = upstream.seen_with(&id).remove(0);
    assert_eq!(seen.one("x-portcullis-subject"), Some("alice"));

    let mia = keys.token("mia", json!({}));
    let (status, body) = curl(&mia, "h2-denied");
    assert_eq!(status, "2 403", "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON refusal");
    assert_eq!(body["error"], "forbidden");
    assert!(upstream.seen_with("h2-denied").is_empty());
    // HTTP/1.1 on the same port as before, and a request shorter than the HTTP/2 preface
    // is answered, not left waiting for the bytes a preface would have.
    assert_eq!(
        p.get("/v1/spaces/s1/documents/d1", Some(&alice), &[])
            .status,
        200
    );
    let short = crate::harness::send_raw(None, p.data, b"GET / HTTP/1.0\r\n\r\n".to_vec())
        .expect("an answer to an 18-byte request");
    assert_eq!(short.status, 403);
}
