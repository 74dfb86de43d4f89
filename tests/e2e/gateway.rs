//! Other ways in: shadow mode, and the decision endpoint behind a real nginx `auth_request`
//! (Debian's nginx, started here). Traefik's and Envoy's ways of asking, and what each
//! gateway kind refuses, are in `hardening.rs`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    Keys, Portcullis, Upstream, free_port, raw_request, raw_request_from, temp_dir,
};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

#[test]
fn shadow_mode_decides_and_counts_but_forwards() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "enforcement:\n  mode: shadow\n  unmatched_status: 404\n",
    );
    p.seed(world::import());
    let gina = keys.token("gina", json!({}));

    let id = uuid::Uuid::now_v7().to_string();
    let r = p.request("PUT", D1, Some(&gina), &[("x-test-id", &id)]);
    assert_eq!(
        r.status, 200,
        "a denied write is forwarded in shadow mode: {}",
        r.body
    );
    let seen = &upstream.seen_with(&id)[0];
    assert_eq!(seen.method, "PUT");
    assert_eq!(
        seen.one("x-portcullis-subject"),
        Some("gina"),
        "identity still vouched for"
    );
    // Counted once the answer has gone out.
    p.wait_for(
        || {
            p.metric(
                "portcullis_requests_total",
                &[("route", "update_document"), ("outcome", "shadow_denied")],
            ) == Some(1.0)
        },
        "the shadow denial is counted once",
    );
    let id = uuid::Uuid::now_v7().to_string();
    let r = p.get(D1, None, &[("x-test-id", &id)]);
    assert_eq!(r.status, 200, "unauthenticated, forwarded in shadow mode");
    assert!(
        upstream.seen_with(&id)[0]
            .one("x-portcullis-subject")
            .is_none()
    );
    p.wait_for(
        || p.log().contains("\"outcome\":\"shadow_denied\""),
        "shadow denials are logged",
    );
    // Not everything is shadowed: ambiguous targets and unknown routes still stop here.
    let r = p.get("/v1/spaces/s1%2Fx", Some(&gina), &[]);
    assert_eq!(r.status, 400);
    let r = p.get("/v1/nothing", Some(&gina), &[]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
}

struct Nginx {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is installed (Debian package `nginx`; .ci/run installs it)")
}

fn start_nginx(portcullis: std::net::SocketAddr, upstream: std::net::SocketAddr) -> Nginx {
    let dir = temp_dir("nginx");
    std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
    let port = free_port();
    let d = dir.display();
    let config = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_portcullis;
      auth_request_set $pc_subject $upstream_http_x_portcullis_subject;
      auth_request_set $pc_roles $upstream_http_x_portcullis_roles;
      auth_request_set $pc_decision $upstream_http_x_portcullis_decision_id;
      proxy_set_header X-Portcullis-Subject $pc_subject;
      proxy_set_header X-Portcullis-Roles $pc_roles;
      proxy_set_header X-Portcullis-Decision-Id $pc_decision;
      proxy_pass http://{upstream};
    }}
    location = /_portcullis {{
      internal;
      proxy_pass http://{portcullis}/.portcullis/authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
  }}
}}
"#
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).expect("nginx.conf");
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { child, addr }
}

#[test]
fn the_decision_endpoint_serves_nginx_auth_request() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(
        &upstream,
        &keys,
        "decision_endpoint:\n  enabled: true\n  gateway: nginx\n",
    );
    p.seed(world::import());
    let nginx = start_nginx(p.data, upstream.addr);
    let alice = format!("Bearer {}", keys.token("alice", json!({})));
    let gina = format!("Bearer {}", keys.token("gina", json!({})));

    // nginx auth_request → Portcullis decides, nginx forwards with the identity it was given.
    let id = uuid::Uuid::now_v7().to_string();
    let r = raw_request(
        nginx.addr,
        "GET",
        D1,
        &[("authorization", &alice), ("x-test-id", &id)],
    )
    .expect("nginx answers");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &upstream.seen_with(&id)[0];
    assert_eq!(seen.one("x-portcullis-subject"), Some("alice"));
    assert_eq!(seen.one("x-portcullis-roles"), Some("guardian"));
    assert_eq!(seen.target, D1);

    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("a denied write", "PUT", Some(gina.as_str()), 403),
        ("no token", "GET", None, 401),
        (
            "a path trick in the original URI",
            "GET",
            Some(alice.as_str()),
            403,
        ),
    ];
    for (case, method, auth, status) in cases {
        let id = uuid::Uuid::now_v7().to_string();
        let target = if case.contains("trick") {
            "/healthz/../v1/tenants/t1"
        } else {
            D1
        };
        let mut headers = vec![("x-test-id", id.as_str())];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let r = raw_request(nginx.addr, method, target, &headers).expect("nginx answers");
        assert_eq!(r.status, *status, "{case}: {}", r.body);
        assert!(
            upstream.seen_with(&id).is_empty(),
            "{case}: reached the upstream"
        );
    }

    // Only trusted gateways may ask, and the endpoint never forwards.
    let id = uuid::Uuid::now_v7().to_string();
    let r = raw_request_from(
        Some("127.0.0.2".parse().expect("ip")),
        p.data,
        "GET",
        "/.portcullis/authz",
        &[
            ("authorization", &alice),
            ("x-original-uri", D1),
            ("x-test-id", &id),
        ],
    )
    .expect("answer");
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (403, Some("untrusted_gateway"))
    );
    assert!(upstream.seen_with(&id).is_empty());
}
