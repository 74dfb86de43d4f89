//! Lifecycle events through the real binary: sent to `POST /v1/events` of `serve`, put
//! on an SQS queue (moto) or a Redis Stream it consumes — each enforced by the data plane
//! within moments, without a restart.

use portcullis_sinks::testing::{Moto, RedisServer};
use serde_json::{Value, json};

use std::time::{Duration, Instant};

use crate::distribution::wait_status;
use crate::harness::{Keys, Portcullis, Upstream, free_port, rt};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// A role assigned lets a refused request through; a revoked session's token is refused;
/// a suspended user is denied — each event sent by `send`.
fn the_three_cases(p: &Portcullis, keys: &Keys, send: &dyn Fn(Value)) {
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
}

#[test]
fn events_over_http_change_what_is_enforced_within_moments() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    the_three_cases(&p, &keys, &|event| {
        let r = p.admin_call("POST", "/v1/events", &event);
        assert_eq!(r.status, 200, "{event}: {}", r.body);
        assert_eq!(r.json()["outcome"], "applied", "{}", r.body);
    });

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
        p.metric_sum(
            "portcullis_events_total",
            &[("source", "http"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(counted("applied"), 3.0);
    assert_eq!(counted("dead_lettered"), 1.0);
    // By type too, an unknown type as `other`.
    assert_eq!(
        p.metric(
            "portcullis_events_total",
            &[
                ("source", "http"),
                ("type", "USER_ROLE_ASSIGNED"),
                ("outcome", "applied")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        p.metric(
            "portcullis_events_total",
            &[("type", "other"), ("outcome", "dead_lettered")]
        ),
        Some(1.0)
    );
}

#[test]
fn events_from_sqs_change_what_is_enforced_within_moments() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let moto = Moto::start(free_port());
    let url = rt().block_on(moto.create_queue("lifecycle", &[]));
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "events:\n  sqs:\n    - queue_url: {url}\n      region: us-east-1\n      endpoint_url: {}\n      wait_seconds: 1\n",
            moto.endpoint()
        ),
    );
    p.seed(world::import());
    let mut console = Console::open(&p);
    let client = moto.client();
    the_three_cases(&p, &keys, &|event| {
        rt().block_on(
            client
                .send_message()
                .queue_url(&url)
                .message_body(event.to_string())
                .send(),
        )
        .expect("sent");
    });
    // A poison message is kept as a dead letter, and deleted from the queue.
    rt().block_on(
        client
            .send_message()
            .queue_url(&url)
            .message_body("{oops")
            .send(),
    )
    .expect("sent");
    p.wait_for(
        || {
            p.metric_sum(
                "portcullis_events_total",
                &[("source", "sqs"), ("outcome", "dead_lettered")],
            ) == Some(1.0)
        },
        "the poison message is dead-lettered",
    );
    let letters = p.admin_call("GET", "/v1/events/dead-letters", &json!({}));
    assert_eq!(
        letters.json()["items"][0]["source"],
        "sqs:lifecycle",
        "{}",
        letters.body
    );
    assert_eq!(
        p.metric_sum(
            "portcullis_events_total",
            &[("source", "sqs"), ("outcome", "applied")]
        ),
        Some(3.0)
    );
    // A console following the live stream saw each, named as it listens for them.
    let seen = console.events(4);
    assert_eq!(
        seen.iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        [
            "USER_ROLE_ASSIGNED",
            "user.session_revoked",
            "USER_STATUS_CHANGED",
            "dead_letter"
        ]
    );
    let ids: Vec<i64> = seen.iter().map(|(_, id)| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids {ids:?}");
}

/// Other services' audit events on their queue end up in the ledger as `external`
/// records, readable through `GET /v1/audit?kind=external`.
#[test]
fn external_audit_events_from_sqs_join_the_ledger() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let moto = Moto::start(free_port());
    let url = rt().block_on(moto.create_queue("epr-audit-events", &[]));
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "events:\n  audit_sqs:\n    - queue_url: {url}\n      region: us-east-1\n      endpoint_url: {}\n      wait_seconds: 1\n",
            moto.endpoint()
        ),
    );
    let event = json!({"event_id": "audit-e2e-1", "source": "issuer-service",
        "action": "issuer.created", "actor_id": "u7", "actor_type": "user",
        "entity_id": "i9", "entity_type": "issuer", "occurred_at": now()});
    rt().block_on(
        moto.client()
            .send_message()
            .queue_url(&url)
            .message_body(event.to_string())
            .send(),
    )
    .expect("sent");
    p.wait_for(
        || {
            p.metric(
                "portcullis_external_audit_total",
                &[("outcome", "recorded")],
            ) == Some(1.0)
        },
        "the audit event is recorded",
    );
    let page = p.admin_call("GET", "/v1/audit?kind=external", &json!({}));
    assert_eq!(page.status, 200, "{}", page.body);
    let items = page.json()["items"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{}", page.body);
    assert_eq!(items[0]["actor"], "user:u7");
    assert_eq!(items[0]["resource"], "issuer:i9");
    assert_eq!(items[0]["after"]["event_id"], "audit-e2e-1");
}

/// A console following `GET /v1/events/stream` over its own connection.
struct Console {
    socket: std::net::TcpStream,
    text: String,
}

impl Console {
    fn open(p: &Portcullis) -> Self {
        use std::io::Write;
        let token = std::fs::read_to_string(p.dir.join("data/admin-token")).expect("admin token");
        let mut socket = std::net::TcpStream::connect(p.admin).expect("the admin API listens");
        write!(
            socket,
            "GET /v1/events/stream HTTP/1.1\r\nHost: portcullis\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {}\r\n\r\n",
            token.trim()
        )
        .expect("request sent");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout set");
        Self {
            socket,
            text: String::new(),
        }
    }

    /// `(name, id)` of the next `n` events, within 10 s. (Each event is one chunk of the
    /// response: its `event:` and `id:` lines are read as they are.)
    fn events(&mut self, n: usize) -> Vec<(String, String)> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<&str> = self.text.lines().collect();
            let names = lines.iter().filter_map(|l| l.strip_prefix("event:"));
            let ids = lines.iter().filter_map(|l| l.strip_prefix("id:"));
            let seen: Vec<(String, String)> = names
                .zip(ids)
                .map(|(name, id)| (name.trim().to_owned(), id.trim().to_owned()))
                .collect();
            if seen.len() >= n {
                return seen.into_iter().take(n).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{n} events not streamed within 10 s:\n{}",
                self.text
            );
            let mut buf = [0_u8; 4096];
            match self.socket.read(&mut buf) {
                Ok(0) => panic!("the stream ended:\n{}", self.text),
                Ok(read) => self.text.push_str(&String::from_utf8_lossy(&buf[..read])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }
}

#[test]
fn events_from_a_redis_stream_change_what_is_enforced_within_moments() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let redis = RedisServer::start(free_port());
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "events:\n  redis:\n    url: {}\n    block_ms: 200\n",
            redis.url()
        ),
    );
    p.seed(world::import());
    the_three_cases(&p, &keys, &|event| {
        let id = redis.cli(&[
            "XADD",
            "portcullis:events",
            "*",
            "event",
            &event.to_string(),
        ]);
        assert!(id.contains('-'), "XADD answered {id}");
    });
    assert_eq!(
        p.metric_sum(
            "portcullis_events_total",
            &[("source", "redis"), ("outcome", "applied")]
        ),
        Some(3.0)
    );
    // Every entry acknowledged by the group.
    p.wait_for(
        || {
            redis
                .cli(&["XPENDING", "portcullis:events", "portcullis"])
                .starts_with('0')
        },
        "nothing left pending",
    );
}

/// p50, p99 and max of `times`.
fn quantiles(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.5), at(0.99), at(1.0))
}

/// Event to enforcement at a separate `portcullis proxy`: a status event put on a queue the
/// control plane consumes, until the proxy following it answers accordingly (the client
/// polls every 5 ms). BENCHMARKS.md's figure: PORTCULLIS_E2E_EVENTS=100 for each queue.
#[test]
fn events_from_queues_reach_a_separate_proxy_within_moments() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let moto = Moto::start(free_port());
    let url = rt().block_on(moto.create_queue("lifecycle", &[]));
    let redis = RedisServer::start(free_port());
    let control = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "events:\n  sqs:\n    - queue_url: {url}\n      region: us-east-1\n      endpoint_url: {}\n  redis:\n    url: {}\n",
            moto.endpoint(),
            redis.url()
        ),
    );
    control.seed(world::import());
    let proxy = Portcullis::start_proxy(&upstream, &keys, &control, "");
    let alice = keys.token("alice", json!({}));
    wait_status(&proxy, &alice, 200, "alice reads d1");
    let events: usize = std::env::var("PORTCULLIS_E2E_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    let client = moto.client();
    let start = jiff::Timestamp::now().as_second();
    let mut seq = 0;
    let mut measure = |send: &dyn Fn(String)| {
        let mut times = Vec::new();
        for i in 0..events {
            seq += 1;
            let (kind, status) = if i % 2 == 0 {
                ("user.deactivated", 403)
            } else {
                ("user.reactivated", 200)
            };
            let at = jiff::Timestamp::from_second(start + seq)
                .expect("time")
                .to_string();
            let event = json!({"id": format!("evt-prop-{seq}"), "type": kind, "timestamp": at,
                "userId": "alice", "data": {}});
            let sent = Instant::now();
            send(event.to_string());
            wait_status(&proxy, &alice, status, kind);
            times.push(sent.elapsed());
        }
        // Back to active for the next queue.
        if events % 2 == 1 {
            seq += 1;
            let at = jiff::Timestamp::from_second(start + seq)
                .expect("time")
                .to_string();
            send(
                json!({"id": format!("evt-prop-{seq}"), "type": "user.reactivated",
                "timestamp": at, "userId": "alice", "data": {}})
                .to_string(),
            );
            wait_status(&proxy, &alice, 200, "reactivated");
        }
        quantiles(times)
    };
    let (p50, p99, max) = measure(&|body| {
        rt().block_on(
            client
                .send_message()
                .queue_url(&url)
                .message_body(body)
                .send(),
        )
        .expect("sent");
    });
    eprintln!("SQS → proxy, {events} events: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    let (p50, p99, max) = measure(&|body| {
        let id = redis.cli(&["XADD", "portcullis:events", "*", "event", &body]);
        assert!(id.contains('-'), "XADD answered {id}");
    });
    eprintln!("Redis Streams → proxy, {events} events: p50 {p50:?}, p99 {p99:?}, max {max:?}");
}
