//! Traffic protection through the real binary: route rate limits (counted in the process,
//! and shared by two proxies through a real Redis) and the brute-force lockout.

use std::time::Duration;

use portcullis_sinks::testing::{RedisServer, free_port};
use serde_json::json;

use crate::harness::{
    Keys, Portcullis, Reply, Upstream, edit, json_request, policies_copy, raw_request_from,
    send_raw,
};
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
        &format!(
            "policies:\n  dir: {}\nrate_limits:\n  headers: all\n",
            dir.display()
        ),
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
            p.audit_records().iter().any(|r| {
                r["reason"] == "rate_limited"
                    && r["route"] == "get_document"
                    && r["principal"] == "User::\"alice\""
                    && r["resource"] == "Document::\"d1\""
            })
        },
        "the refusal in the audit ledger, naming whom and what",
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
    assert!(
        !third.headers.contains_key("ratelimit"),
        "by default only refusals carry the headers"
    );
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

#[test]
fn a_route_refuses_headers_and_bodies_over_its_limits_and_a_silent_upstream_gets_504() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = policies_copy("request-limits");
    edit(
        &dir,
        "routes.yaml",
        "    action: document.update\n    resource: Document::{doc}\n    parents: [\"Space::{space}\"]\n    band: AMBER\n",
        "    action: document.update\n    resource: Document::{doc}\n    parents: [\"Space::{space}\"]\n    band: AMBER\n    request_limits: { max_header_bytes: 2048, max_body_bytes: 100, upstream_timeout_ms: 1000, client_timeout_ms: 300 }\n",
    );
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!("policies:\n  dir: {}\n", dir.display()),
    );
    p.seed(world::import());
    let alice = format!("Bearer {}", keys.token("alice", json!({})));
    let auth = ("authorization", alice.as_str());

    // Within the limits: decided and forwarded.
    let small = json_request(
        p.data,
        "PUT",
        D1,
        &[auth, ("x-test-id", "small")],
        &json!({"title": "ok"}),
    )
    .expect("an answer");
    assert_eq!(small.status, 200, "{}", small.body);
    assert_eq!(upstream.seen_with("small").len(), 1);

    // Headers over 2 KiB: 431, before authentication.
    let padding = "x".repeat(3000);
    let big_headers = p.request("PUT", D1, None, &[("x-padding", &padding)]);
    assert_eq!(big_headers.status, 431, "{}", big_headers.body);
    assert_eq!(
        big_headers.json(),
        json!({"error": "request_header_fields_too_large", "reason": "headers_too_large"})
    );
    // The same headers on another route are no problem there.
    let alice_token = keys.token("alice", json!({}));
    assert_eq!(
        p.get(D1, Some(&alice_token), &[("x-padding", &padding)])
            .status,
        200
    );

    // A body announced over 100 bytes: 413 at once, the upstream never sees it.
    let big = json!({"title": "y".repeat(200)});
    let announced = json_request(p.data, "PUT", D1, &[auth, ("x-test-id", "announced")], &big)
        .expect("an answer");
    assert_eq!(announced.status, 413, "{}", announced.body);
    assert_eq!(
        announced.json(),
        json!({"error": "content_too_large", "reason": "body_too_large"})
    );
    assert!(upstream.seen_with("announced").is_empty());

    // A chunked body that grows past it while it streams: 413 too (the upstream waits a
    // little before it answers, as one reading the body would).
    let chunk = "z".repeat(80);
    let chunked = format!(
        "PUT {D1} HTTP/1.1\r\nhost: {}\r\nauthorization: {alice}\r\nx-test-id: streamed\r\nx-delay-ms: 400\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        p.data,
        chunk.len(),
        chunk.len()
    );
    let streamed = send_raw(None, p.data, chunked.into_bytes()).expect("an answer");
    assert_eq!(streamed.status, 413, "{}", streamed.body);
    assert_eq!(streamed.json()["reason"], "body_too_large");

    // A client that stops halfway through its body: 408 once it has been silent for the
    // route's 300 ms, and the connection closed (this reads to its end). The upstream takes
    // 900 ms to answer, as one reading the whole body would.
    let stalled = format!(
        "PUT {D1} HTTP/1.1\r\nhost: {}\r\nauthorization: {alice}\r\nx-delay-ms: 900\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{{\"title\":",
        p.data
    );
    let timed_out = send_raw(None, p.data, stalled.into_bytes()).expect("an answer");
    assert_eq!(timed_out.status, 408, "{}", timed_out.body);
    assert_eq!(timed_out.json(), json!({"error": "request_timeout"}));
    assert_eq!(p.metric("portcullis_client_timeouts_total", &[]), Some(1.0));

    // The upstream silent for longer than the route's second: 504 as JSON. The default
    // read timeout of other routes waits for it.
    let slow = json_request(
        p.data,
        "PUT",
        D1,
        &[auth, ("x-delay-ms", "2500")],
        &json!({}),
    )
    .expect("an answer");
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(slow.json(), json!({"error": "gateway_timeout"}));
    assert_eq!(
        p.get(D1, Some(&alice_token), &[("x-delay-ms", "2500")])
            .status,
        200
    );

    p.wait_for(
        || {
            p.metric(
                "portcullis_bad_requests_total",
                &[("reason", "body_too_large")],
            ) == Some(2.0)
                && p.metric(
                    "portcullis_bad_requests_total",
                    &[("reason", "headers_too_large")],
                ) == Some(1.0)
        },
        "the refusals counted by reason",
    );
}

/// A WebSocket upstream that echoes text messages; counts the handshakes it accepted and
/// keeps the subject Portcullis named in each.
struct EchoSocket {
    addr: std::net::SocketAddr,
    subjects: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EchoSocket {
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let subjects = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&subjects);
        rt.spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            while let Ok((stream, _)) = listener.accept().await {
                let seen = std::sync::Arc::clone(&seen);
                tokio::spawn(async move {
                    #[expect(
                        clippy::result_large_err,
                        reason = "the signature tungstenite's handshake callback has"
                    )]
                    let callback =
                        |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         response| {
                            let subject = request
                                .headers()
                                .get("x-portcullis-subject")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            seen.lock().expect("subjects").push(subject);
                            Ok(response)
                        };
                    let Ok(mut socket) =
                        tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() && socket.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, subjects }
    }
}

#[test]
fn a_websocket_upgrade_is_decided_first_and_then_carries_frames_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let echo = EchoSocket::start(&rt);
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "upstreams:\n  - name: sockets\n    address: {}\n",
            echo.addr
        ),
    );
    p.seed(world::import());
    let connect = |token: Option<&str>| {
        let mut request = format!("ws://{}{D1}", p.data)
            .into_client_request()
            .expect("request");
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(p.data)
                .await
                .expect("connect");
            tokio_tungstenite::client_async(request, stream).await
        })
    };

    // Allowed: upgraded, and frames pass both ways.
    let alice = keys.token("alice", json!({}));
    let (mut socket, response) = connect(Some(&alice)).expect("alice's upgrade");
    assert_eq!(response.status(), 101);
    let echoed = rt.block_on(async {
        socket.send(Message::text("hello")).await.expect("send");
        tokio::time::timeout(Duration::from_secs(5), socket.next()).await
    });
    match echoed {
        Ok(Some(Ok(message))) => assert_eq!(message, Message::text("hello")),
        other => panic!("no echo: {other:?}\n{}", p.log()),
    }
    assert_eq!(*echo.subjects.lock().expect("subjects"), ["alice"]);

    // Denied (mia has no grant on d1) and unauthenticated: refused before any upgrade, and
    // the upstream never hears of them.
    for (token, status) in [(Some(keys.token("mia", json!({}))), 403), (None, 401)] {
        match connect(token.as_deref()) {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), status);
            }
            Err(other) => panic!("refused with {other}"),
            Ok(_) => panic!("upgraded without a grant"),
        }
    }
    assert_eq!(echo.subjects.lock().expect("subjects").len(), 1);
}

/// The gRPC echo server of `grpc_echo.py` (grpcio), killed when dropped.
struct GrpcEcho {
    port: u16,
    child: std::process::Child,
}

impl GrpcEcho {
    fn start() -> Self {
        use std::io::BufRead;
        let port = free_port();
        let mut child = std::process::Command::new("python3")
            .arg(grpc_script())
            .args(["server", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 grpc_echo.py (tests/setup installs grpcio)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's first line");
        assert_eq!(line.trim(), "ready", "the gRPC server did not start");
        Self { port, child }
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn grpc_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/grpc_echo.py")
}

/// One call through Portcullis with the real gRPC client: "CODE reply-or-message".
fn grpc_call(portcullis: &Portcullis, method: &str, token: Option<&str>) -> String {
    let out = std::process::Command::new("python3")
        .arg(grpc_script())
        .args([
            "call",
            &portcullis.data.to_string(),
            method,
            token.unwrap_or("-"),
        ])
        .output()
        .expect("python3 grpc_echo.py call");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_grpc_method_is_decided_and_refusals_are_grpc_statuses() {
    let echo = GrpcEcho::start();
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = policies_copy("grpc");
    edit(
        &dir,
        "routes.yaml",
        "routes:\n",
        "routes:\n  - name: echo_say\n    grpc: portcullis.test.Echo/Say\n    action: document.read\n    resource: Document::\"d1\"\n    parents: [\"Space::\\\"s1\\\"\"]\n    rate_limit: { requests: 3, per: 1m, by: principal }\n",
    );
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "policies:\n  dir: {}\nupstreams:\n  - name: grpc\n    address: 127.0.0.1:{}\n    http2: true\n",
            dir.display(),
            echo.port
        ),
    );
    p.seed(world::import());

    // Allowed: through Portcullis over HTTP/2 both ways, with the identity headers.
    let alice = keys.token("alice", json!({}));
    assert_eq!(
        grpc_call(&p, "Say", Some(&alice)),
        "OK echo hi for alice",
        "{}",
        p.log()
    );
    // Refused the gRPC way, never as an HTTP error page.
    let mia = keys.token("mia", json!({}));
    let denied = grpc_call(&p, "Say", Some(&mia));
    assert!(
        denied.starts_with("PERMISSION_DENIED"),
        "mia has no grant on d1: {denied}"
    );
    assert_eq!(grpc_call(&p, "Say", None), "UNAUTHENTICATED missing");
    let unrouted = grpc_call(&p, "Nope", Some(&alice));
    assert_eq!(
        unrouted, "PERMISSION_DENIED no_route",
        "a method without a route is refused"
    );
    // Alice's limit is three a minute: her third call passes, the fourth is exhausted.
    assert!(grpc_call(&p, "Say", Some(&alice)).starts_with("OK"));
    assert!(grpc_call(&p, "Say", Some(&alice)).starts_with("OK"));
    assert_eq!(
        grpc_call(&p, "Say", Some(&alice)),
        "RESOURCE_EXHAUSTED rate_limited"
    );
}
