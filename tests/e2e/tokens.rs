//! Authentication: every way a token can be wrong is a 401 with a Bearer challenge, never a
//! 500 and never a forward; a rotated key is picked up without a restart.

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{Keys, Portcullis, Upstream};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn bad_tokens_are_refused_with_a_bearer_challenge() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    // The instance's clock (context.fixed_time), which tokens are judged on.
    let now = crate::harness::pinned_now();
    let claims = |extra: Value| Keys::claims("alice", extra);

    assert_eq!(
        p.get(D1, Some(&keys.rs256(&claims(json!({})))), &[]).status,
        200,
        "RS256"
    );
    assert_eq!(
        p.get(D1, Some(&keys.eddsa(&claims(json!({})))), &[]).status,
        200,
        "EdDSA"
    );

    let hs256_confusion = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(String::from(crate::harness::RSA_KID));
        let key = jsonwebtoken::EncodingKey::from_secret(keys.rsa_public_pem.as_bytes());
        jsonwebtoken::encode(&header, &claims(json!({})), &key).expect("sign")
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    let tampered = {
        let good = keys.rs256(&claims(json!({})));
        let parts: Vec<&str> = good.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&claims(json!({"sub": "tom"}))),
            parts[2]
        )
    };
    let unknown_kid = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&json!({"alg": "RS256", "kid": "not-in-the-jwks"})),
        b64(&claims(json!({})))
    );
    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    let critical = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(String::from(crate::harness::ED_KID));
        header.crit = Some(vec![String::from("exp-ext")]);
        keys.sign_with(header, &claims(json!({})))
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no credentials", None, "missing"),
        (
            "expired beyond the leeway",
            Some(keys.rs256(&claims(json!({"exp": now - 120})))),
            "expired",
        ),
        (
            "not yet valid",
            Some(keys.rs256(&claims(json!({"nbf": now + 600})))),
            "not_yet_valid",
        ),
        ("alg none", Some(alg_none), "malformed"),
        (
            "wrong audience",
            Some(keys.rs256(&claims(json!({"aud": "someone-else"})))),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            Some(keys.rs256(&claims(json!({"iss": "https://evil.test"})))),
            "wrong_issuer",
        ),
        (
            "RS256 key used as an HS256 secret",
            Some(hs256_confusion),
            "algorithm_not_allowed",
        ),
        ("unknown kid", Some(unknown_kid), "unknown_key"),
        (
            "payload changed after signing",
            Some(tampered),
            "bad_signature",
        ),
        ("no exp", Some(keys.rs256(&no_exp)), "missing_claim"),
        (
            "exp not a number",
            Some(keys.rs256(&claims(json!({"exp": "tomorrow"})))),
            "missing_claim",
        ),
        (
            "issued in the future beyond the leeway",
            Some(keys.rs256(&claims(json!({"iat": now + 600})))),
            "issued_in_future",
        ),
        (
            "iss as an array holding ours",
            Some(keys.rs256(&claims(json!({"iss": [crate::harness::ISSUER]})))),
            "wrong_issuer",
        ),
        (
            "a crit header we do not understand",
            Some(critical),
            "critical_header",
        ),
        (
            "expired on this instance's clock, not on the wall clock",
            Some(keys.rs256(&claims(json!({"exp": now - 120})))),
            "expired",
        ),
        ("not a JWT", Some(String::from("abc.def")), "malformed"),
    ];
    for (case, token, reason) in cases {
        let id = uuid::Uuid::now_v7().to_string();
        let r = p.get(D1, token.as_deref(), &[("x-test-id", &id)]);
        assert_eq!(r.status, 401, "{case}: {}", r.body);
        assert_eq!(r.json()["reason"], reason, "{case}: {}", r.body);
        let challenge = &r.headers["www-authenticate"];
        assert!(
            challenge.starts_with("Bearer realm=\"portcullis\""),
            "{case}: {challenge}"
        );
        if reason != "missing" {
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "{case}: {challenge}"
            );
        }
        assert!(
            upstream.seen_with(&id).is_empty(),
            "{case}: reached the upstream"
        );
    }

    let r = p.get(D1, None, &[("authorization", "Basic YWxpY2U6cHc=")]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("not_bearer"))
    );
    assert!(r.headers["www-authenticate"].contains("invalid_request"));
    let huge = format!("Bearer {}", "a".repeat(9000));
    let r = p.get(D1, None, &[("authorization", &huge)]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("too_large"))
    );

    // One clock judges a token, the cached path and the verifying path alike: a token valid
    // on the instance's pinned clock but expired on the wall clock keeps passing, and one
    // expired on the pinned clock keeps failing.
    let real = jiff::Timestamp::now().as_second();
    if real > now + 600 {
        let pinned_valid = keys.rs256(&claims(
            json!({"iat": now - 10, "nbf": now - 10, "exp": now + 300}),
        ));
        for attempt in 0..3 {
            assert_eq!(
                p.get(D1, Some(&pinned_valid), &[]).status,
                200,
                "attempt {attempt}"
            );
        }
    }

    // The signature is checked once per token: the second use comes from the cache.
    let token = keys.rs256(&claims(json!({})));
    let cached_before = p
        .metric("portcullis_jwt_validations_total", &[("outcome", "cached")])
        .unwrap_or(0.0);
    assert_eq!(p.get(D1, Some(&token), &[]).status, 200);
    assert_eq!(p.get(D1, Some(&token), &[]).status, 200);
    let cached_after = p
        .metric("portcullis_jwt_validations_total", &[("outcome", "cached")])
        .unwrap_or(0.0);
    assert_eq!(cached_after - cached_before, 1.0);
}

#[test]
fn a_rotated_jwks_file_is_picked_up() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let rotated = Keys::generate();
    let token = rotated.token("alice", json!({}));
    // Same kids, new keys: the old JWKS verifies nothing signed with them.
    assert_eq!(p.get(D1, Some(&token), &[]).status, 401);
    std::fs::write(p.dir.join("jwks.json"), rotated.jwks.to_string()).expect("rotate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = rotated.token("alice", json!({}));
        if p.get(D1, Some(&fresh), &[]).status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation not picked up:\n{}",
            p.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let old = keys.token("alice", json!({}));
    assert_eq!(
        p.get(D1, Some(&old), &[]).status,
        401,
        "the old key is gone"
    );
}

#[test]
fn a_key_removed_from_the_jwks_stops_the_tokens_it_signed_even_cached_ones() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let rsa_token = keys.rs256(&Keys::claims("alice", json!({})));
    let ed_token = keys.eddsa(&Keys::claims("alice", json!({})));
    for _ in 0..2 {
        assert_eq!(
            p.get(D1, Some(&rsa_token), &[]).status,
            200,
            "verified, then cached"
        );
        assert_eq!(p.get(D1, Some(&ed_token), &[]).status, 200);
    }
    // Drop the RSA key, keep the Ed25519 one.
    let mut jwks = keys.jwks.clone();
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != crate::harness::RSA_KID);
    std::fs::write(p.dir.join("jwks.json"), jwks.to_string()).expect("rewrite");
    p.wait_for(
        || p.get(D1, Some(&rsa_token), &[]).status == 401,
        "the cached token of the removed key is refused",
    );
    assert_eq!(
        p.get(D1, Some(&ed_token), &[]).status,
        200,
        "a kept key's token still verifies"
    );
}

/// Serves a JWKS document that the test can replace (`null`: answers 503), over HTTP.
fn jwks_server(
    initial: serde_json::Value,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<serde_json::Value>>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let doc = std::sync::Arc::new(std::sync::Mutex::new(initial));
    let served = std::sync::Arc::clone(&doc);
    let listener = crate::harness::rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    crate::harness::rt().spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = std::sync::Arc::clone(&served);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| {
                        // `null`: the identity provider is down.
                        let doc = served.lock().expect("jwks").clone();
                        async move {
                            let mut response =
                                hyper::Response::new(Full::new(Bytes::from(doc.to_string())));
                            if doc.is_null() {
                                *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, doc)
}

#[test]
fn a_jwks_url_is_fetched_and_an_unknown_kid_triggers_a_refetch() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let (addr, doc) = jwks_server(keys.jwks.clone());
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "auth:\n  issuer: {}\n  audiences: [{}]\n  jwks_url: http://{addr}/jwks.json\n  jwks_refresh_seconds: 3600\n  unknown_kid_cooldown_seconds: 1\n",
            crate::harness::ISSUER,
            crate::harness::AUDIENCE
        ),
    );
    p.seed(world::import());
    assert_eq!(
        p.get(D1, Some(&keys.token("alice", json!({}))), &[]).status,
        200
    );

    // The identity provider rotates to a new key: the first token with its kid is refused
    // (no fetch on the request path) and starts a refetch; soon after, it is accepted.
    let rotated = Keys::generate();
    let mut jwks = rotated.jwks.clone();
    for key in jwks["keys"].as_array_mut().expect("keys") {
        let kid = key["kid"].as_str().expect("kid").to_owned();
        key["kid"] = json!(format!("{kid}-v2"));
    }
    *doc.lock().expect("jwks") = jwks;
    let token = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(format!("{}-v2", crate::harness::ED_KID));
        rotated.sign_with(header, &Keys::claims("alice", json!({})))
    };
    let first = p.get(D1, Some(&token), &[]);
    assert_eq!(
        (first.status, first.json()["reason"].as_str()),
        (401, Some("unknown_key"))
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.get(D1, Some(&token), &[]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "rotated key not fetched:\n{}",
            p.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let metrics = p.metrics_text();
    assert!(
        metrics.contains("portcullis_jwks_refreshes_total{outcome=\"ok\"}"),
        "{metrics}"
    );
}

/// The world, and a workload `Service::"{id}"` of tenant t1 with the `service` role there.
fn with_workload(id: &str) -> portcullis_store::Import {
    let mut import = world::import();
    import.principals.push(portcullis_model::Principal {
        kind: portcullis_model::PrincipalKind::Service,
        ..world::user(id, "t1")
    });
    import.assignments.push(world::grant(
        &format!(
            "a-{}",
            id.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ),
        &format!("Service::\"{id}\""),
        "service",
        Some(r#"Tenant::"t1""#),
    ));
    import
}

/// Issuer of the cluster's service-account tokens in the test below.
const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";

#[test]
fn several_issuers_are_each_verified_with_their_own_keys_and_token_policy() {
    let upstream = Upstream::start();
    let (idp, cluster) = (Keys::generate(), Keys::generate());
    let (addr, doc) = jwks_server(idp.jwks.clone());
    let dir = crate::harness::temp_dir("issuers");
    let cluster_jwks = dir.join("cluster-jwks.json");
    std::fs::write(&cluster_jwks, cluster.jwks.to_string()).expect("jwks");
    let p = Portcullis::start(
        &upstream,
        &idp,
        &format!(
            "auth:
  issuer: {issuer}
  audiences: [{audience}]
  jwks_url: http://{addr}/jwks.json
  jwks_refresh_seconds: 10
  jwks_max_age_seconds: 11
  unknown_kid_cooldown_seconds: 1
  max_token_lifetime_seconds: 7200
  issuers:
    - issuer: {CLUSTER}
      jwks_file: {cluster_jwks}
      principal_type: service
      subjects:
        allow: [\"system:serviceaccount:shop:*\"]
",
            issuer = crate::harness::ISSUER,
            audience = crate::harness::AUDIENCE,
            cluster_jwks = cluster_jwks.display(),
        ),
    );
    let workload = "system:serviceaccount:shop:api";
    p.seed(with_workload(workload));

    // Tokens judged on the instance's pinned clock, an hour long unless said otherwise.
    let now = crate::harness::pinned_now();
    let claims = |iss: &str, sub: &str, extra: Value| {
        let mut c = json!({
            "iss": iss, "aud": crate::harness::AUDIENCE, "sub": sub,
            "iat": now - 60, "exp": now + 3600,
        });
        if let (Some(map), Value::Object(extra)) = (c.as_object_mut(), extra) {
            map.extend(extra);
        }
        c
    };
    let issuer = crate::harness::ISSUER;
    let reason = |token: &str| {
        let r = p.get(D1, Some(token), &[]);
        (r.status, r.json()["reason"].as_str().map(str::to_owned))
    };
    let refused = |why: &str| (401, Some(why.to_owned()));

    let alice = idp.rs256(&claims(issuer, "alice", json!({})));
    assert_eq!(p.get(D1, Some(&alice), &[]).status, 200, "the IdP's user");
    let api = cluster.rs256(&claims(CLUSTER, workload, json!({})));
    let id = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        p.get(D1, Some(&api), &[("x-test-id", &id)]).status,
        200,
        "the cluster's workload, a service by its issuer"
    );
    assert_eq!(
        upstream.seen_with(&id)[0].one("x-portcullis-principal-type"),
        Some("service")
    );

    // Both key sets use the same `kid`s: a token is checked with its own issuer's keys only.
    assert_eq!(
        reason(&idp.rs256(&claims(CLUSTER, workload, json!({})))),
        refused("bad_signature"),
        "the cluster's `iss` signed with the IdP's key"
    );
    assert_eq!(
        reason(&cluster.rs256(&claims(issuer, "alice", json!({})))),
        refused("bad_signature"),
        "the IdP's `iss` signed with the cluster's key"
    );
    assert_eq!(
        reason(&idp.rs256(&claims("https://idp.elsewhere", "alice", json!({})))),
        refused("unknown_issuer")
    );
    // The token policy of each issuer.
    assert_eq!(
        reason(&cluster.rs256(&claims(
            CLUSTER,
            "system:serviceaccount:kube-system:default",
            json!({})
        ))),
        refused("subject_not_allowed")
    );
    assert_eq!(
        reason(&idp.rs256(&claims(issuer, "alice", json!({"exp": now + 3 * 3600})))),
        refused("lifetime_too_long"),
        "three hours where two are the most"
    );
    assert_eq!(
        reason(&cluster.rs256(&claims(CLUSTER, workload, json!({"exp": now + 3 * 3600})))),
        refused("lifetime_too_long"),
        "the cluster's issuer sets no bound of its own: it has `auth`'s"
    );

    // The IdP goes down: its keys are trusted for 11 s after the last fetch, then its
    // tokens fail closed (503), while the cluster's go on; back up, its tokens come back.
    *doc.lock().expect("jwks") = Value::Null;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    loop {
        let r = reason(&alice);
        if r == (503, Some(String::from("keys_stale"))) {
            break;
        }
        assert_eq!(r.0, 200, "before the bound: {r:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "keys never went stale:\n{}",
            p.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(
        p.get(D1, Some(&api), &[]).status,
        200,
        "another issuer's keys are fresh"
    );
    *doc.lock().expect("jwks") = idp.jwks.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while p.get(D1, Some(&alice), &[]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "keys never came back:\n{}",
            p.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    for code in [
        "unknown_issuer",
        "subject_not_allowed",
        "lifetime_too_long",
        "keys_stale",
    ] {
        assert!(
            p.metric("portcullis_jwt_validations_total", &[("outcome", code)])
                .is_some_and(|n| n >= 1.0),
            "{code} counted"
        );
    }
}

#[test]
fn the_upstream_verifies_the_identity_assertion_against_the_published_jwks() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "identity_assertion:\n  enabled: true\n  audience: documents-app\n  lifetime_seconds: 120\n",
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0b20ifQ.";
    let id = uuid::Uuid::now_v7().to_string();
    let sent = [
        ("x-test-id", id.as_str()),
        ("x-portcullis-assertion", forged),
    ];
    assert_eq!(p.get(D1, Some(&alice), &sent).status, 200);
    let seen = upstream.seen_with(&id);
    let assertion = seen[0]
        .one("x-portcullis-assertion")
        .expect("an assertion")
        .to_owned();
    assert_eq!(
        seen[0].all("x-portcullis-assertion").len(),
        1,
        "the client's is gone"
    );

    // What an upstream does: fetch the JWKS from the ops listener and verify.
    let jwks = crate::harness::raw_request(p.ops, "GET", "/.well-known/jwks.json", &[])
        .expect("jwks answer");
    assert_eq!(jwks.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks.body).expect("a JWKS");
    let kid = jsonwebtoken::decode_header(&assertion)
        .expect("header")
        .kid
        .expect("kid");
    let jwk = set.find(&kid).expect("the signing key is published");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["documents-app"]);
    validation.set_issuer(&["portcullis"]);
    // Issued on the instance's pinned clock, not today's.
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(
        &assertion,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("the assertion verifies")
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["principal_type"], "user");
    assert_eq!(claims["tenant"], "t1");
    assert_eq!(claims["roles"], json!(["guardian"]));
    assert_eq!(claims["iat"].as_i64(), Some(crate::harness::pinned_now()));
    assert_eq!(
        claims["exp"].as_i64(),
        Some(crate::harness::pinned_now() + 120)
    );

    // Tampered with, it no longer verifies.
    let parts: Vec<&str> = assertion.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": "tom", "aud": "documents-app", "iss": "portcullis", "exp": 0})),
        parts[2]
    );
    assert!(
        jsonwebtoken::decode::<Value>(
            &tampered,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key"),
            &validation
        )
        .is_err()
    );

    // A public route carries no assertion, and not the client's either.
    let id = uuid::Uuid::now_v7().to_string();
    let sent = [
        ("x-test-id", id.as_str()),
        ("x-portcullis-assertion", forged),
    ];
    assert_eq!(p.get("/healthz", None, &sent).status, 200);
    assert_eq!(
        upstream.seen_with(&id)[0].one("x-portcullis-assertion"),
        None
    );
}

#[test]
fn a_client_certificate_with_a_spiffe_id_is_a_workload_beside_token_users() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = crate::harness::temp_dir("mtls");
    let pki = crate::cluster::Pki::new(&dir);
    let api = "spiffe://prod.example/ns/shop/sa/api";
    let workload = pki.workload(&dir, "api", api);
    let elsewhere = pki.workload(&dir, "dev", "spiffe://dev.example/ns/shop/sa/api");
    let port = crate::harness::free_port();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, keys.jwks.to_string()).expect("jwks");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &(format!(
            "listen:\n  address: {{data}}\n  tls:\n    address: 127.0.0.1:{port}\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ) + &format!(
            "auth:\n  issuer: {}\n  audiences: [{}]\n  jwks_file: {}\n  certificates:\n    trust_domains: [prod.example]\n",
            crate::harness::ISSUER,
            crate::harness::AUDIENCE,
            jwks.display()
        )),
    );
    p.seed(with_workload(api));

    let get = |identity: Option<(&std::path::Path, &std::path::Path)>, token: Option<&str>| {
        let client = pki.client(identity);
        let id = uuid::Uuid::now_v7().to_string();
        let answer = crate::harness::rt().block_on(async {
            let mut request = client
                .get(format!("https://localhost:{port}{D1}"))
                .header("x-test-id", &id);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            Ok::<_, String>((status, body["reason"].as_str().map(str::to_owned)))
        });
        let seen = upstream.seen_with(&id);
        let subject = seen
            .first()
            .and_then(|s| s.one("x-portcullis-subject"))
            .map(str::to_owned);
        (answer, subject)
    };
    let as_workload = Some((workload.0.as_path(), workload.1.as_path()));

    let (answer, subject) = get(as_workload, None);
    assert_eq!(answer, Ok((200, None)), "the workload, by its certificate");
    assert_eq!(subject.as_deref(), Some(api));
    let (answer, _) = get(Some((elsewhere.0.as_path(), elsewhere.1.as_path())), None);
    assert_eq!(
        answer,
        Ok((401, Some(String::from("untrusted_domain")))),
        "a SPIFFE ID of another trust domain"
    );
    let (answer, _) = get(None, None);
    assert_eq!(
        answer,
        Ok((401, Some(String::from("missing")))),
        "neither token nor certificate: as on plain HTTP"
    );
    let alice = keys.token("alice", json!({}));
    let (answer, subject) = get(None, Some(&alice));
    assert_eq!(answer, Ok((200, None)));
    assert_eq!(
        subject.as_deref(),
        Some("alice"),
        "users with tokens, beside"
    );
    let (_, subject) = get(as_workload, Some(&alice));
    assert_eq!(
        subject.as_deref(),
        Some("alice"),
        "a token decides over the connection's certificate"
    );
    let (stranger_cert, stranger_key) = pki.stranger();
    assert!(
        get(Some((stranger_cert, stranger_key)), None).0.is_err(),
        "a certificate of no trusted CA fails the handshake"
    );
}

/// `unknown_principals: from_claims`: a user the store does not hold is decided by the
/// roles, tenant and attributes its token claims; stored principals still win (a stored
/// suspended user stays refused, a stored user's roles are not widened by its claims); a
/// deleted principal's tokens cannot bring it back, whether it was stored or only claimed.
#[test]
fn a_user_only_in_the_token_is_decided_by_its_claims_and_the_store_still_wins() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = crate::harness::temp_dir("claims");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, keys.jwks.to_string()).expect("jwks");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "auth:
  issuer: {issuer}
  audiences: [{audience}]
  jwks_file: {jwks}
  unknown_principals: from_claims
  claim_mapping:
    tenant: /org/id
    groups: [/groups]
    roles:
      - {{pointer: /realm_access/roles, scope: tenant}}
    attributes:
      clearance: /clearance
",
            issuer = crate::harness::ISSUER,
            audience = crate::harness::AUDIENCE,
            jwks = jwks.display(),
        ),
    );
    p.seed(world::import());
    let token = |sub: &str, tenant: &str, roles: Value| {
        keys.token(
            sub,
            json!({"org": {"id": tenant}, "realm_access": {"roles": roles}, "clearance": 0}),
        )
    };
    let status = |token: &str, target: &str| {
        let r = p.get(target, Some(token), &[("x-test-id", "claims")]);
        (r.status, r.json()["reason"].as_str().map(str::to_owned))
    };

    // A user only in the token, a member of t1 by a claim: allowed, and the upstream is told
    // the role.
    let zoe = token("zoe", "t1", json!(["member"]));
    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(D1, Some(&zoe), &[("x-test-id", &id)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = upstream.seen_with(&id).remove(0);
    assert_eq!(seen.one("x-portcullis-roles"), Some("member"));
    assert_eq!(seen.one("x-portcullis-tenant"), Some("t1"));
    // The audit record names the role as one from claims.
    p.wait_for(
        || {
            p.audit_records()
                .iter()
                .any(|r| r["decision"] == "allow" && r["claimed_roles"] == json!(["member"]))
        },
        "an allow recorded with its claimed role",
    );
    // The claim absent, or a member of another tenant: refused.
    let no_role = token("zoe", "t1", json!([]));
    assert_eq!(status(&no_role, D1), (403, Some(String::from("no_permit"))));
    let elsewhere = token("zoe", "t2", json!(["member"]));
    assert_eq!(status(&elsewhere, D1).0, 403);
    // An unreadable claim maps to nothing: no role.
    let mistyped = token("zoe", "t1", json!("member"));
    assert_eq!(status(&mistyped, D1).0, 200, "a lone string is one role");
    let garbage = keys.token("zoe", json!({"org": {"id": "t1"}, "realm_access": 7}));
    assert_eq!(status(&garbage, D1).0, 403);

    // Stored principals win: sam is stored and suspended; dora is a guest of d1 only.
    let sam = token("sam", "t1", json!(["guardian"]));
    assert_eq!(status(&sam, D1).0, 403, "a stored suspended user");
    let dora = token("dora", "t1", json!(["guardian"]));
    assert_eq!(status(&dora, D1).0, 200, "dora's stored role");
    assert_eq!(
        status(&dora, "/v1/spaces/s1/documents/d2").0,
        403,
        "claims do not widen a stored user's roles"
    );

    // Deleted from the store: dora's tokens issued before cannot bring her back through
    // her claims.
    let r = p.admin_call("DELETE", "/v1/principals/users/dora", &json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    p.wait_for(|| status(&dora, D1).0 == 401, "dora's token revoked");
    assert_eq!(status(&dora, D1).1.as_deref(), Some("session_revoked"));
    // A `user.deleted` event for a user only ever seen in tokens does the same.
    let r = p.admin_call(
        "POST",
        "/v1/events",
        &json!({"id": "evt-zoe-deleted", "type": "user.deleted",
            "timestamp": jiff::Timestamp::now().to_string(), "userId": "zoe", "data": {}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    p.wait_for(|| status(&zoe, D1).0 == 401, "zoe's token revoked");
}
