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

/// Serves a JWKS document that the test can replace, over HTTP.
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
                        let body = served.lock().expect("jwks").to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
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
