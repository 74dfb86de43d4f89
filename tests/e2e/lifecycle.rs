//! Operating it: health and metrics (checked by Prometheus' own `promtool`), live reload
//! that refuses a bad configuration and applies a good one, and a SIGTERM that turns
//! `/readyz` to 503 before the process drains and exits.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream, raw_request};
use crate::world;

#[test]
fn ops_endpoints_answer_and_metrics_pass_promtool() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    assert_eq!(
        p.get("/v1/spaces/s1/documents/d1", Some(&alice), &[])
            .status,
        200
    );
    assert_eq!(p.get("/v1/spaces/s1/documents/d1", None, &[]).status, 401);

    let live = raw_request(p.ops, "GET", "/livez", &[]).expect("livez");
    assert_eq!(live.status, 200);
    let ready = raw_request(p.ops, "GET", "/readyz?verbose", &[]).expect("readyz");
    assert_eq!(ready.status, 200);
    for check in ["[+] keys", "[+] snapshot", "[+] routes", "[+] shutdown"] {
        assert!(ready.body.contains(check), "{check} in {}", ready.body);
    }
    assert_eq!(
        raw_request(p.ops, "GET", "/healthz", &[])
            .expect("healthz")
            .status,
        200
    );
    assert_eq!(
        raw_request(p.ops, "GET", "/nope", &[]).expect("404").status,
        404
    );

    // Requests are counted once their answer has gone out.
    let counted = [
        "portcullis_requests_total{outcome=\"allowed\",route=\"get_document\"} 1",
        "portcullis_requests_total{outcome=\"unauthenticated\",route=\"get_document\"} 1",
    ];
    p.wait_for(
        || {
            let text = p.metrics_text();
            counted.iter().all(|line| text.contains(line))
        },
        "both requests are counted",
    );
    let text = p.metrics_text();
    for name in [
        counted[0],
        counted[1],
        "portcullis_decision_duration_seconds_bucket",
        "portcullis_upstream_duration_seconds_bucket",
        "portcullis_jwt_validations_total",
        "portcullis_snapshot_revision",
        "portcullis_snapshot_age_seconds",
        "portcullis_build_info{cedar=",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("alice") && !line.contains("/v1/"),
            "a metric label carries a principal or a path: {line}"
        );
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = promtool.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reload_refuses_bad_config_applies_good_and_sigterm_drains() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let delete =
        |p: &Portcullis| p.request("DELETE", "/v1/spaces/s1/documents/d2", Some(&alice), &[]);
    assert_eq!(
        delete(&p).status,
        200,
        "Tuesday 10:00 is inside working hours"
    );

    let good = std::fs::read_to_string(&p.config_file).expect("config");
    let rejected = |p: &Portcullis| {
        p.metric(
            "portcullis_config_reloads_total",
            &[("outcome", "rejected")],
        )
        .unwrap_or(0.0)
    };
    let applied = |p: &Portcullis| {
        p.metric("portcullis_config_reloads_total", &[("outcome", "applied")])
            .unwrap_or(0.0)
    };

    // A configuration with an unknown key is refused; the old one keeps serving.
    std::fs::write(&p.config_file, format!("{good}\nthreds: 4\n")).expect("write");
    p.signal("HUP");
    p.wait_for(|| rejected(&p) >= 1.0, "the bad reload is counted");
    assert!(p.log().contains("threds"), "the log names the bad key");
    assert_eq!(
        delete(&p).status,
        200,
        "still serving the old configuration"
    );

    // A good change (the clock moves to Saturday) is applied without a restart.
    let saturday = good.replace("2026-01-06T10:00:00Z", "2026-01-10T10:00:00Z");
    assert_ne!(saturday, good);
    std::fs::write(&p.config_file, saturday).expect("write");
    p.signal("HUP");
    p.wait_for(|| applied(&p) >= 1.0, "the good reload is applied");
    let r = delete(&p);
    assert_eq!(r.status, 403, "{}", r.body);
    let id = r.json()["decision_id"]
        .as_str()
        .expect("decision id")
        .to_owned();
    assert_eq!(p.decided_by(&id), ["sensitive-outside-working-hours"]);

    // SIGTERM: /readyz turns 503 first while requests are still served, a request in flight
    // is finished, then the process exits well within Kubernetes' 30 s.
    let mut p = p;
    let slow = {
        let (addr, auth) = (p.data, format!("Bearer {alice}"));
        std::thread::spawn(move || {
            raw_request(
                addr,
                "GET",
                "/v1/spaces/s1/documents/d1",
                &[("authorization", &auth), ("x-delay-ms", "2500")],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    p.signal("TERM");
    p.wait_for(
        || raw_request(p.ops, "GET", "/readyz", &[]).is_some_and(|r| r.status == 503),
        "readyz turns 503",
    );
    let served = p.get("/v1/spaces/s1/documents/d1", Some(&alice), &[]);
    assert_eq!(served.status, 200, "still serving while draining");
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits after draining");
    assert!(status.success(), "clean exit: {status}");
    let slow = slow
        .join()
        .expect("slow request thread")
        .expect("the request in flight was answered");
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A graceful stop signs a last checkpoint over the whole ledger: no unsigned tail.
    let last = p.audit_records().last().expect("records")["seq"].clone();
    let out = p.verify_ledger_with(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("last at seq {last}")), "{stdout}");
}

#[test]
fn https_listener_follows_its_certificate_files() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let tls = Tls::new();
    let first = &tls.first;
    let (cert_file, key_file) = (&tls.cert_file, &tls.key_file);
    let p = Portcullis::start(&upstream, &keys, &tls.listen());
    let https_port = tls.port;
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let get = |trusted_pem: &str| https_status(https_port, trusted_pem, &alice);
    assert_eq!(get(&first.cert.pem()).expect("https answers"), 200);

    // New files: the listener serves the new certificate without a restart.
    let second = rcgen::generate_simple_self_signed(vec![String::from("localhost")]).expect("cert");
    std::fs::write(key_file, second.key_pair.serialize_pem()).expect("key");
    std::fs::write(cert_file, second.cert.pem()).expect("cert");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&second.cert.pem()).is_err() {
        assert!(
            Instant::now() < deadline,
            "new certificate not served:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        get(&first.cert.pem()).is_err(),
        "the old certificate is gone"
    );

    // A broken pair keeps the certificate in force.
    std::fs::write(cert_file, "not a certificate").expect("cert");
    let rejected = || {
        p.metric(
            "portcullis_config_reloads_total",
            &[("outcome", "rejected")],
        )
        .unwrap_or(0.0)
    };
    p.wait_for(|| rejected() >= 1.0, "the broken certificate is refused");
    assert_eq!(get(&second.cert.pem()).expect("still served"), 200);
}

/// The status of an HTTPS GET of a document on `port`, trusting only `trusted_pem`.
fn https_status(port: u16, trusted_pem: &str, token: &str) -> reqwest::Result<u16> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(trusted_pem.as_bytes()).expect("pem"))
        .resolve(
            "localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()
        .expect("client");
    crate::harness::rt().block_on(async {
        client
            .get(format!(
                "https://localhost:{port}/v1/spaces/s1/documents/d1"
            ))
            .bearer_auth(token)
            .send()
            .await
            .map(|r| r.status().as_u16())
    })
}

/// `portcullis proxy` serves HTTPS like `serve` when `listen.tls` is configured (it once
/// started without the HTTPS listener, silently).
#[test]
fn the_data_plane_alone_serves_https_too() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let control = Portcullis::start(&upstream, &keys, "");
    control.seed(world::import());
    let tls = Tls::new();
    let (cert, https_port) = (&tls.first, tls.port);
    let proxy = Portcullis::start_proxy(&upstream, &keys, &control, &tls.listen());
    let alice = keys.token("alice", json!({}));
    let zoe = keys.token("zoe", json!({}));
    assert_eq!(
        https_status(https_port, &cert.cert.pem(), &alice).expect("https answers"),
        200,
        "{}",
        proxy.log()
    );
    assert_eq!(
        https_status(https_port, &cert.cert.pem(), &zoe).expect("https answers"),
        403,
        "decided over HTTPS as over HTTP"
    );
}

/// A self-signed certificate for `localhost` in files, and a free HTTPS port.
struct Tls {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    first: rcgen::CertifiedKey,
    port: u16,
}

impl Tls {
    fn new() -> Self {
        let dir = crate::harness::temp_dir("tls");
        let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        let first =
            rcgen::generate_simple_self_signed(vec![String::from("localhost")]).expect("cert");
        std::fs::write(&cert_file, first.cert.pem()).expect("cert");
        std::fs::write(&key_file, first.key_pair.serialize_pem()).expect("key");
        Self {
            cert_file,
            key_file,
            first,
            port: crate::harness::free_port(),
        }
    }

    /// The `listen` section serving it (and plain HTTP on `{data}`).
    fn listen(&self) -> String {
        format!(
            "listen:\n  address: {{data}}\n  tls:\n    address: 127.0.0.1:{}\n    cert_file: {}\n    key_file: {}\n",
            self.port,
            self.cert_file.display(),
            self.key_file.display()
        )
    }
}
