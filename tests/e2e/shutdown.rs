//! SIGTERM under load, for each of `serve`, `control` and `proxy`: the process exits 0
//! within its drain delay and grace period, a request in flight (and an open `/v1/watch`
//! stream) is finished, and no response is cut — every request is answered whole or not
//! accepted at all.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream};
use crate::world;

/// Drain 1 s, then at most 5 s for what is in flight.
const SHUTDOWN: &str = "shutdown:\n  drain_delay_seconds: 1\n  grace_period_seconds: 5\n  runtime_timeout_seconds: 5\n";
/// The most a stop may take: the drain delay (1 s), the grace period for what is in flight
/// (5 s; under load that never pauses, all of it), Pingora's own fixed second after closing
/// its listeners, and a second for the rest. A part that outlives the grace period also
/// leaves a warning in the log, checked below.
const STOP_LIMIT: Duration = Duration::from_secs(8);

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    /// A whole response with this status.
    Whole(u16),
    /// Refused, or closed before a byte of response: the client may retry.
    NotAccepted,
    /// Part of a response, then the connection ended.
    Cut(String),
}

/// Sends `request` on a fresh connection and reads the reply to its end.
fn exchange(addr: SocketAddr, request: &[u8]) -> Outcome {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return Outcome::NotAccepted;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    if stream.write_all(request).is_err() {
        return Outcome::NotAccepted;
    }
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        return Outcome::NotAccepted;
    }
    if let Err(e) = read {
        return Outcome::Cut(format!("{e} after {} bytes", raw.len()));
    }
    judge(&raw)
}

/// Whether `raw` is one whole HTTP/1.1 response.
fn judge(raw: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Cut(format!("no end of head: {text}"));
    };
    let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else {
        return Outcome::Cut(format!("no status: {head}"));
    };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() != length {
            return Outcome::Cut(format!("{} of {length} body bytes", body.len()));
        }
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        && !body.ends_with("0\r\n\r\n")
    {
        return Outcome::Cut(format!("chunked body without its last chunk: {body:?}"));
    }
    Outcome::Whole(status)
}

/// Clients sending `request` one after the other until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: SocketAddr, request: Vec<u8>, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (stop, request) = (Arc::clone(&stop), request.clone());
                std::thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        outcomes.push(exchange(addr, &request));
                        if matches!(outcomes.last(), Some(Outcome::NotAccepted)) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    outcomes
                })
            })
            .collect();
        Self { stop, clients }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().expect("load client"))
            .collect()
    }
}

/// A request as bytes.
fn request(method: &str, target: &str, addr: SocketAddr, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// SIGTERMs `p` while `load` runs on `addr` and `in_flight` are being answered; checks the
/// exit, the time it took, and every outcome.
fn stop_under_load(p: &mut Portcullis, addr: SocketAddr, load: Vec<u8>, in_flight: &[Vec<u8>]) {
    let load = Load::start(addr, load, 3);
    let in_flight: Vec<_> = in_flight
        .iter()
        .map(|r| {
            let (addr, r) = (addr, r.clone());
            std::thread::spawn(move || exchange(addr, &r))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("the process exits");
    let took = started.elapsed();
    let outcomes = load.finish();

    assert!(status.success(), "exit {status}:\n{}", p.log());
    assert!(
        took < STOP_LIMIT,
        "stopped in {took:?}, past {STOP_LIMIT:?}:\n{}",
        p.log()
    );
    let cut: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Cut(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    assert!(cut.is_empty(), "responses cut: {cut:?}");
    let whole = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Whole(200)))
        .count();
    assert!(whole > 0, "the load was served: {outcomes:?}");
    for request in in_flight {
        let outcome = request.join().expect("in-flight request");
        assert!(
            matches!(outcome, Outcome::Whole(200)),
            "the request in flight at SIGTERM was answered whole: {outcome:?}"
        );
    }
    assert!(
        !p.log().contains("still running after the grace period"),
        "{}",
        p.log()
    );
}

/// [`stop_under_load`] on the data plane: alice reading a document she may read, answered
/// at once by the upstream, and one such read answered after 1.5 s in flight.
fn stop_data_plane_under_load(p: &mut Portcullis, keys: &Keys) {
    let auth = format!("Bearer {}", keys.token("alice", json!({})));
    let read = |delay: &str| {
        request(
            "GET",
            "/v1/spaces/s1/documents/d1",
            p.data,
            &[("authorization", &auth), ("x-delay-ms", delay)],
        )
    };
    let (load, slow) = (read("0"), read("1500"));
    let data = p.data;
    stop_under_load(p, data, load, &[slow]);
}

#[test]
fn serve_stops_cleanly_under_load() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let mut p = Portcullis::start(&upstream, &keys, SHUTDOWN);
    p.seed(world::import());
    stop_data_plane_under_load(&mut p, &keys);
}

#[test]
fn control_stops_cleanly_under_load_and_ends_its_streams() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let mut p = Portcullis::start_control(&upstream, &keys, SHUTDOWN);
    let token = std::fs::read_to_string(p.dir.join("data/admin-token")).expect("admin token");
    let auth = format!("Bearer {}", token.trim());
    let load = request("GET", "/v1/roles", p.admin, &[("authorization", &auth)]);
    // A sidecar's stream of changes: ended whole at shutdown, not left hanging.
    let watch = request(
        "GET",
        "/v1/watch?since=0&heartbeat_ms=60000",
        p.admin,
        &[("authorization", &auth)],
    );
    // A console's stream of events: the same.
    let events = request(
        "GET",
        "/v1/events/stream",
        p.admin,
        &[("authorization", &auth)],
    );
    let admin = p.admin;
    stop_under_load(&mut p, admin, load, &[watch, events]);
}

#[test]
fn proxy_stops_cleanly_under_load() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let control = Portcullis::start_control(&upstream, &keys, "");
    control.seed(world::import());
    let mut p = Portcullis::start_proxy(&upstream, &keys, &control, SHUTDOWN);
    stop_data_plane_under_load(&mut p, &keys);
}
