//! What an adversary tried against the request path, as classes: the decision endpoint
//! asked about one request while the gateway forwards another, a second credential beside
//! the verified one, method overrides, forged forwarding headers, odd `Host`s. Each class in
//! every spelling, through the real binary and a real upstream.

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream, raw_request, send_raw};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";
/// Alice (guardian of s1) may read D1 but not the tenant.
const FORBIDDEN: &str = "/v1/tenants/t1";

fn endpoint(kind: &str) -> String {
    format!("decision_endpoint:\n  enabled: true\n  gateway: {kind}\n")
}

/// Spellings a CGI-style server reads as the same header.
fn spellings(canonical: &str) -> Vec<String> {
    vec![
        canonical.to_owned(),
        canonical.to_ascii_uppercase(),
        canonical.replace('-', "_"),
        canonical.replace('-', "."),
    ]
}

#[test]
fn the_decision_endpoint_decides_exactly_what_each_gateway_forwards() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let alice = format!("Bearer {}", keys.token("alice", json!({})));
    let ask = |p: &Portcullis, target: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("authorization", alice.as_str())];
        all.extend_from_slice(headers);
        raw_request(p.data, "GET", target, &all).expect("answer")
    };
    let reason = |r: &crate::harness::Reply| r.json()["reason"].as_str().map(str::to_owned);

    // Traefik: the gateway's X-Forwarded-Uri names what it forwards; a client's
    // X-Original-URI (in any spelling) beside it is a contradiction, not the answer.
    let traefik = Portcullis::start(&upstream, &keys, &endpoint("traefik"));
    traefik.seed(world::import());
    let base = [("x-forwarded-method", "GET"), ("x-forwarded-uri", D1)];
    assert_eq!(ask(&traefik, "/.portcullis/authz", &base).status, 200);
    let forbidden = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", FORBIDDEN),
    ];
    assert_eq!(ask(&traefik, "/.portcullis/authz", &forbidden).status, 403);
    for header in [
        "x-original-uri",
        "x-original-url",
        "x-rewrite-url",
        "x-envoy-original-path",
    ] {
        for name in spellings(header) {
            let mut headers = forbidden.to_vec();
            headers.push((name.as_str(), D1));
            let r = ask(&traefik, "/.portcullis/authz", &headers);
            assert_eq!(
                (r.status, reason(&r).as_deref()),
                (400, Some("gateway_headers_conflict")),
                "traefik + client `{name}`"
            );
        }
    }
    // A missing method is refused, never taken as GET; so is a method contradicted.
    let r = ask(&traefik, "/.portcullis/authz", &[("x-forwarded-uri", D1)]);
    assert_eq!(
        (r.status, reason(&r).as_deref()),
        (400, Some("gateway_method_missing"))
    );
    let r = ask(
        &traefik,
        "/.portcullis/authz",
        &[
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", D1),
            ("x-original-method", "GET"),
        ],
    );
    assert_eq!(
        (r.status, reason(&r).as_deref()),
        (400, Some("gateway_headers_conflict"))
    );
    for twin in spellings("x-forwarded-uri").into_iter().skip(1) {
        let mut headers = base.to_vec();
        headers.push((twin.as_str(), FORBIDDEN));
        let r = ask(&traefik, "/.portcullis/authz", &headers);
        assert_eq!(r.status, 400, "a repeated X-Forwarded-Uri as `{twin}`");
    }
    // Method overrides cannot be stripped from what the gateway forwards: refused.
    let mut headers = base.to_vec();
    headers.push(("X-HTTP-Method-Override", "DELETE"));
    let r = ask(&traefik, "/.portcullis/authz", &headers);
    assert_eq!(
        (r.status, reason(&r).as_deref()),
        (400, Some("method_override"))
    );
    drop(traefik);

    // nginx reads X-Original-*; Traefik's headers do not stand in for them.
    let nginx = Portcullis::start(&upstream, &keys, &endpoint("nginx"));
    nginx.seed(world::import());
    let r = ask(&nginx, "/.portcullis/authz", &base);
    assert_eq!(
        (r.status, reason(&r).as_deref()),
        (400, Some("gateway_method_missing"))
    );
    let r = ask(
        &nginx,
        "/.portcullis/authz",
        &[("x-original-uri", FORBIDDEN)],
    );
    assert_eq!(
        (r.status, reason(&r).as_deref()),
        (400, Some("gateway_method_missing"))
    );
    let good = [("x-original-method", "GET"), ("x-original-uri", D1)];
    assert_eq!(ask(&nginx, "/.portcullis/authz", &good).status, 200);
    let mut headers = vec![("x-original-method", "GET"), ("x-original-uri", FORBIDDEN)];
    headers.push(("x-forwarded-uri", D1));
    assert_eq!(ask(&nginx, "/.portcullis/authz", &headers).status, 400);
    // What is asked is decided: Gina (a guest of s1) may read D1, not change it.
    let gina = format!("Bearer {}", keys.token("gina", json!({})));
    for (method, status) in [("GET", 200), ("PUT", 403)] {
        let r = raw_request(
            nginx.data,
            "GET",
            "/.portcullis/authz",
            &[
                ("authorization", &gina),
                ("x-original-method", method),
                ("x-original-uri", D1),
            ],
        )
        .expect("answer");
        assert_eq!(r.status, status, "Gina's {method} is decided as one");
    }
    drop(nginx);

    // Envoy: the path after the endpoint's and the request's own method; any header that
    // names another target is a contradiction.
    let envoy = Portcullis::start(&upstream, &keys, &endpoint("envoy"));
    envoy.seed(world::import());
    assert_eq!(
        ask(&envoy, &format!("/.portcullis/authz{D1}"), &[]).status,
        200
    );
    assert_eq!(
        ask(&envoy, &format!("/.portcullis/authz{FORBIDDEN}"), &[]).status,
        403
    );
    for header in ["x-original-uri", "x-forwarded-uri"] {
        let r = ask(
            &envoy,
            &format!("/.portcullis/authz{FORBIDDEN}"),
            &[(header, D1)],
        );
        assert_eq!(r.status, 400, "envoy + `{header}`");
    }
}

#[test]
fn only_the_verified_credential_reaches_the_upstream() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let alice = format!("Bearer {}", keys.token("alice", json!({})));
    let gina = format!("Bearer {}", keys.token("gina", json!({})));

    // Two credentials, in every form: refused before anything is decided or forwarded.
    let repeated: &[(&str, &[(&str, &str)])] = &[
        (
            "two Authorization headers",
            &[("authorization", &alice), ("Authorization", &gina)],
        ),
        (
            "the same one twice",
            &[("authorization", &alice), ("authorization", &alice)],
        ),
        (
            "public route too",
            &[("authorization", &alice), ("AUTHORIZATION", "Basic eDp5")],
        ),
    ];
    for (case, headers) in repeated {
        let id = uuid::Uuid::now_v7().to_string();
        let mut all = headers.to_vec();
        all.push(("x-test-id", &id));
        let target = if case.starts_with("public") {
            "/healthz"
        } else {
            D1
        };
        let r = raw_request(p.data, "GET", target, &all).expect("answer");
        assert_eq!(
            (r.status, r.json()["reason"].as_str()),
            (400, Some("credentials_repeated")),
            "{case}"
        );
        assert!(upstream.seen_with(&id).is_empty(), "{case}: forwarded");
    }
    for query in [
        "?access_token=x",
        "?a=1&access_token=x",
        "?access%5Ftoken=x",
    ] {
        let id = uuid::Uuid::now_v7().to_string();
        let target = format!("{D1}{query}");
        let r = raw_request(
            p.data,
            "GET",
            &target,
            &[("authorization", &alice), ("x-test-id", &id)],
        )
        .expect("answer");
        assert_eq!(r.status, 400, "{query}");
        assert!(upstream.seen_with(&id).is_empty());
    }

    // One credential: exactly it goes on, and never a Proxy-Authorization.
    let id = uuid::Uuid::now_v7().to_string();
    let r = raw_request(
        p.data,
        "GET",
        D1,
        &[
            ("authorization", &alice),
            ("proxy-authorization", &gina),
            ("Proxy_Authorization", &gina),
            ("x-test-id", &id),
        ],
    )
    .expect("answer");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &upstream.seen_with(&id)[0];
    assert_eq!(seen.all("authorization"), [alice.as_str()]);
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.replace(['_', '.'], "-").starts_with("proxy-auth")),
        "{:?}",
        seen.headers
    );
    drop(p);

    // forward_credential: none keeps it back; shadow mode never passes an unverified one.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "auth:\n  forward_credential: none\nenforcement:\n  mode: shadow\n",
    );
    p.seed(world::import());
    let id = uuid::Uuid::now_v7().to_string();
    let r = raw_request(
        p.data,
        "GET",
        D1,
        &[("authorization", &alice), ("x-test-id", &id)],
    )
    .expect("answer");
    assert_eq!(r.status, 200);
    assert!(upstream.seen_with(&id)[0].all("authorization").is_empty());
    drop(p);
    let p = Portcullis::start(&upstream, &keys, "enforcement:\n  mode: shadow\n");
    p.seed(world::import());
    let id = uuid::Uuid::now_v7().to_string();
    let r = raw_request(
        p.data,
        "GET",
        D1,
        &[("authorization", "Bearer not-a-token"), ("x-test-id", &id)],
    )
    .expect("answer");
    assert_eq!(r.status, 200, "shadowed: forwarded");
    assert!(
        upstream.seen_with(&id)[0].all("authorization").is_empty(),
        "an unverified credential never reaches the upstream"
    );
}

#[test]
fn method_overrides_never_change_what_was_decided() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "enforcement:\n  method_override_query: [_method]\n",
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        for name in spellings(header) {
            let id = uuid::Uuid::now_v7().to_string();
            let r = p.get(
                D1,
                Some(&alice),
                &[(name.as_str(), "DELETE"), ("x-test-id", &id)],
            );
            assert_eq!(
                (r.status, r.json()["reason"].as_str()),
                (400, Some("method_override")),
                "`{name}`"
            );
            assert!(upstream.seen_with(&id).is_empty(), "`{name}` forwarded");
        }
    }
    for query in ["?_method=DELETE", "?a=1&_method=put", "?%5Fmethod=DELETE"] {
        let r = p.get(&format!("{D1}{query}"), Some(&alice), &[]);
        assert_eq!(r.status, 400, "{query}");
    }
    // Naming the same method is harmless: forwarded, without the header.
    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(
        D1,
        Some(&alice),
        &[("X-HTTP-Method-Override", "GET"), ("x-test-id", &id)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        upstream.seen_with(&id)[0]
            .all("x-http-method-override")
            .is_empty()
    );
    drop(p);

    // strip: decided and forwarded as sent, the overrides gone.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "enforcement:\n  method_override: strip\n  method_override_query: [_method]\n",
    );
    p.seed(world::import());
    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(
        &format!("{D1}?a=1&_method=DELETE"),
        Some(&alice),
        &[
            ("X_HTTP_Method_Override", "DELETE"),
            ("x-method-override", "PUT"),
            ("x-test-id", &id),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &upstream.seen_with(&id)[0];
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/v1/spaces/s1/documents/d1?a=1")
    );
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.replace(['_', '.'], "-").contains("method")),
        "{:?}",
        seen.headers
    );
}

#[test]
fn forwarding_headers_say_what_portcullis_saw_unless_a_trusted_hop_said_it() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let forged: Vec<(String, &str)> = [
        "x-forwarded-for",
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-host",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
    ]
    .iter()
    .flat_map(|h| spellings(h).into_iter().skip(2).chain([h.to_string()]))
    .map(|name| (name, "6.6.6.6"))
    .collect();
    let send = |p: &Portcullis| {
        let id = uuid::Uuid::now_v7().to_string();
        let mut headers: Vec<(&str, &str)> = forged.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        headers.push(("x-test-id", &id));
        let r = p.get("/healthz", None, &headers);
        assert_eq!(r.status, 200);
        upstream.seen_with(&id).remove(0)
    };

    let p = Portcullis::start(&upstream, &keys, "context:\n  trusted_hops: []\n");
    let seen = send(&p);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert!(
        seen.headers.iter().all(|(_, v)| v != "6.6.6.6"),
        "a forged forwarding header passed: {:?}",
        seen.headers
    );
    drop(p);

    // From a trusted hop, the exact spellings pass (the chain is extended); the others
    // never do, since a trusted proxy does not write them.
    let p = Portcullis::start(
        &upstream,
        &keys,
        "context:\n  trusted_hops: [127.0.0.1/32]\n",
    );
    let seen = send(&p);
    assert_eq!(seen.all("x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(seen.all("x-real-ip"), ["6.6.6.6"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["6.6.6.6"]);
    assert!(
        seen.headers.iter().all(|(n, _)| !n.contains(['_', '.'])),
        "{:?}",
        seen.headers
    );
}

#[test]
fn host_must_be_one_valid_name_and_a_trailing_dot_routes_like_none() {
    let app = Upstream::start();
    let api = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &app,
        &keys,
        &format!(
            "upstreams:\n  - name: api\n    address: {}\n    host: api.test\n  - name: app\n    address: {}\n",
            api.addr, app.addr
        ),
    );
    for host in ["api.test.", "API.test.:8480", "api.test"] {
        let id = uuid::Uuid::now_v7().to_string();
        let r = p.get("/healthz", None, &[("host", host), ("x-test-id", &id)]);
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(api.seen_with(&id).len(), 1, "`{host}` goes to api");
    }
    let bad: &[(&str, &[u8])] = &[
        (
            "no Host",
            b"GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n",
        ),
        (
            "two Hosts",
            b"GET /healthz HTTP/1.1\r\nhost: app\r\nhost: api.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "a path in Host",
            b"GET /healthz HTTP/1.1\r\nhost: api.test/x\r\nconnection: close\r\n\r\n",
        ),
        (
            "userinfo in Host",
            b"GET /healthz HTTP/1.1\r\nhost: u@api.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "a bad port",
            b"GET /healthz HTTP/1.1\r\nhost: api.test:80x\r\nconnection: close\r\n\r\n",
        ),
    ];
    for (case, request) in bad {
        let r = send_raw(None, p.data, request.to_vec()).expect("answer");
        assert_eq!(r.status, 400, "{case}: {}", r.body);
    }
    // HTTP/1.0 may leave it out.
    let r = send_raw(None, p.data, b"GET /healthz HTTP/1.0\r\n\r\n".to_vec()).expect("answer");
    assert_eq!(r.status, 200);
}

#[test]
fn a_request_head_trickling_in_is_cut_at_its_deadline_and_counted() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "listen:\n  address: {data}\n  request_head_timeout_ms: 1000\n",
    );
    // Slowloris: a byte every 200 ms, each read well inside any per-read timeout, for up to
    // 3 s (writes fail soon after the server closes; if they do not, reading below still
    // ends at once on a closed connection, and waits 10 s on an open one).
    let mut slow = std::net::TcpStream::connect(p.data).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nhost: a\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for byte in head {
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    // The server closed the connection at the deadline: reading ends at once.
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "the connection stayed open {elapsed:?} for a head trickling in"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "the trickled request was served: {}",
        String::from_utf8_lossy(&rest)
    );
    p.wait_for(
        || p.metric("portcullis_request_head_timeouts_total", &[]) == Some(1.0),
        "the cut is counted",
    );

    // A head that arrives in time, in pieces, and a slow body after it, are served.
    let mut ok = std::net::TcpStream::connect(p.data).expect("connect");
    ok.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for piece in [
        &b"GET /healthz HTTP/1.1\r\n"[..],
        b"host: a\r\n",
        b"connection: close\r\n\r\n",
    ] {
        ok.write_all(piece).expect("write");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut answer = String::new();
    ok.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Keep-alive: the idle wait before the next request is not part of any head.
    let mut kept = std::net::TcpStream::connect(p.data).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for round in 0..2 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
            .expect("write");
        let answer = read_one_response(&mut kept);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// One response with a `content-length` body from a kept-alive connection.
fn read_one_response(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut byte = [0_u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("head");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .expect("content-length");
    let mut body = vec![0_u8; length];
    stream.read_exact(&mut body).expect("body");
    head
}
