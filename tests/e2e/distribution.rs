//! A control plane and a separate data plane: `portcullis serve` (or `portcullis control`
//! replicas sharing a PostgreSQL database) as the control plane, `portcullis proxy`
//! following it. Changes reach the proxy; the proxy keeps enforcing when the control plane
//! dies, restarts from its last-known-good state, and fails closed once that state is too
//! old.

use std::time::{Duration, Instant};

use portcullis_store::scratch::ScratchPostgres;
use portcullis_store::{SqlStore, Store, StoreConfig};
use serde_json::json;

use crate::harness::{Keys, Portcullis, Upstream, raw_request, rt};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

/// Polls `D1` every 5 ms until it answers `status`; how long that took.
pub(crate) fn wait_status(p: &Portcullis, token: &str, status: u16, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let r = p.get(D1, Some(token), &[]);
        if r.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: last {} {}\n{}",
            r.status,
            r.body,
            p.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_proxy_follows_its_control_plane_survives_it_and_fails_closed_when_stale() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let mut control = Portcullis::start(&upstream, &keys, "");
    control.seed(world::import());
    // The proxy's own route map, to change it live.
    let routes_dir = crate::harness::temp_dir("routes");
    let routes_file = routes_dir.join("routes.yaml");
    std::fs::copy(
        crate::harness::policies_dir().join("routes.yaml"),
        &routes_file,
    )
    .expect("copy");
    let mut proxy = Portcullis::start_proxy(
        &upstream,
        &keys,
        &control,
        &format!("policies:\n  dir: {}\n", routes_dir.display()),
    );
    let alice = keys.token("alice", json!({}));
    let zoe = keys.token("zoe", json!({}));
    assert_eq!(
        proxy.get(D1, Some(&alice), &[]).status,
        200,
        "{}",
        proxy.log()
    );

    // Its route map reloads live (the file watch or SIGHUP), checked against the policies
    // the control plane sent.
    let moved = std::fs::read_to_string(&routes_file)
        .expect("routes")
        .replace(
            "path: /v1/spaces/{space}/documents/{doc}\n",
            "path: /v2/spaces/{space}/documents/{doc}\n",
        );
    std::fs::write(&routes_file, moved).expect("write routes");
    proxy.signal("HUP");
    let started = Instant::now();
    while proxy
        .get("/v2/spaces/s1/documents/d1", Some(&alice), &[])
        .status
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "routes not reloaded:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        proxy.get(D1, Some(&alice), &[]).json()["reason"],
        "no_route"
    );
    std::fs::copy(
        crate::harness::policies_dir().join("routes.yaml"),
        &routes_file,
    )
    .expect("restore");
    proxy.signal("HUP");
    wait_status(&proxy, &alice, 200, "routes restored");

    // Changes made through the control plane's API are enforced by the proxy.
    let r = control.admin_call(
        "PUT",
        "/v1/principals/users/zoe",
        &json!({"kind": "user", "id": "zoe", "tenant": "t1"}),
    );
    assert_eq!(r.status, 200);
    // BENCHMARKS.md's figure: PORTCULLIS_E2E_CHANGES=100 (grants and revocations).
    let changes: usize = std::env::var("PORTCULLIS_E2E_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut propagation = Vec::new();
    for i in 0..changes.div_ceil(2) {
        let id = format!("zoe-{i}");
        let r = control.admin_call(
            "POST",
            "/v1/assignments",
            &json!({"id": id, "principal": "User::\"zoe\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        propagation.push(wait_status(&proxy, &zoe, 200, "grant reaches the proxy"));
        let r = control.admin_call("DELETE", &format!("/v1/assignments/{id}"), &json!({}));
        assert_eq!(r.status, 204);
        propagation.push(wait_status(
            &proxy,
            &zoe,
            403,
            "revocation reaches the proxy",
        ));
    }
    propagation.sort();
    let at =
        |q: f64| propagation[((propagation.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "control plane → proxy, {} changes: p50 {:?}, p99 {:?}, max {:?}",
        propagation.len(),
        at(0.5),
        at(0.99),
        propagation[propagation.len() - 1]
    );
    assert!(at(0.99) < Duration::from_secs(1), "p99 within 1 s");

    // The control plane dies: the proxy keeps enforcing what it knows.
    control.kill9();
    assert_eq!(proxy.get(D1, Some(&alice), &[]).status, 200);
    assert_eq!(proxy.get(D1, Some(&zoe), &[]).status, 403);

    // Restarted while the control plane is still down: it serves its last-known-good state.
    proxy.kill9();
    proxy.restart();
    assert!(
        proxy.log().contains("serving the last-known-good state"),
        "{}",
        proxy.log()
    );
    assert_eq!(proxy.get(D1, Some(&alice), &[]).status, 200);
    assert_eq!(proxy.get(D1, Some(&zoe), &[]).status, 403);

    // Past max_staleness (3 s) it fails closed and says so.
    let stale = wait_status(&proxy, &alice, 503, "fails closed when stale");
    assert!(stale < Duration::from_secs(5), "{stale:?}");
    let r = proxy.get(D1, Some(&alice), &[]);
    assert_eq!(r.json()["reason"], "state_stale");
    let ready = raw_request(proxy.ops, "GET", "/readyz?verbose", &[]).expect("readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("[-] control plane"), "{}", ready.body);

    // The control plane comes back: so does the proxy, within about a second.
    control.restart();
    let back = wait_status(&proxy, &alice, 200, "recovers with the control plane");
    eprintln!("proxy following again {back:?} after the control plane came back");
    assert!(back < Duration::from_secs(2), "{back:?}");

    // The last-known-good file is the owner's alone, and sealed: edited while the control
    // plane is away (Sam, suspended, made active), it is refused like a corrupt file.
    let lkg = proxy.dir.join("data/last-known-good.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lkg).expect("lkg").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    control.kill9();
    proxy.kill9();
    let text = std::fs::read_to_string(&lkg).expect("lkg");
    assert!(text.contains("\"suspended\""), "Sam is in it");
    std::fs::write(&lkg, text.replacen("\"suspended\"", "\"active\"", 1)).expect("edit");
    proxy.restart_unready();
    proxy.wait_for(
        || proxy.log().contains("the seal does not verify"),
        "the edited state is refused",
    );
    let ready = raw_request(proxy.ops, "GET", "/readyz", &[]);
    assert!(
        ready.is_none_or(|r| r.status != 200),
        "not ready on an edited state"
    );
    control.restart();
    proxy.wait_until_ready();
    assert_eq!(proxy.get(D1, Some(&alice), &[]).status, 200);
}

/// Debian's libfaketime (package `faketime`; `.ci/run` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn a_wall_clock_stepped_back_during_an_outage_does_not_keep_a_proxy_fresh() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's `faketime` (.ci/run does)"
    );
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let mut control = Portcullis::start(&upstream, &keys, "");
    control.seed(world::import());
    // The proxy's wall clock is read from a file on every call; its monotonic clock is real.
    let clock = crate::harness::temp_dir("faketime").join("offset");
    std::fs::write(&clock, "+0").expect("clock file");
    let clock_path = clock.display().to_string();
    let proxy = Portcullis::start_proxy_with_env(
        &upstream,
        &keys,
        &control,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let alice = keys.token("alice", json!({}));
    wait_status(
        &proxy,
        &alice,
        200,
        "the proxy enforces the control plane's state",
    );

    // The control plane goes away, and the proxy's wall clock steps back an hour.
    control.kill9();
    std::fs::write(&clock, "-1h").expect("step the clock back");
    let stale = wait_status(
        &proxy,
        &alice,
        503,
        "fails closed once stale, whatever the wall clock says",
    );
    assert!(stale < Duration::from_secs(6), "{stale:?}");
    assert_eq!(
        proxy.get(D1, Some(&alice), &[]).json()["reason"],
        "state_stale"
    );
}

#[test]
fn control_replicas_share_postgres_and_a_proxy_enforces_changes_made_through_either() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let database = rt()
        .block_on(ScratchPostgres::create("e2e"))
        .expect("PostgreSQL must be reachable (see .ci/run)");
    let store = format!("store:\n  postgres_url: {}\n", database.url);
    let a = Portcullis::start_control(&upstream, &keys, &store);
    let b = Portcullis::start_control(&upstream, &keys, &store);

    // A control plane serves no data plane.
    assert!(
        std::net::TcpStream::connect_timeout(&a.data, Duration::from_millis(500)).is_err(),
        "`control` must not listen on listen.address"
    );

    let shared = rt()
        .block_on(SqlStore::connect(&StoreConfig::Postgres {
            url: database.url.clone(),
        }))
        .expect("store");
    let revision = rt()
        .block_on(shared.import(&world::import()))
        .expect("import");
    a.wait_revision(revision);
    b.wait_revision(revision);

    let proxy = Portcullis::start_proxy(&upstream, &keys, &a, "");
    let alice = keys.token("alice", json!({}));
    let zoe = keys.token("zoe", json!({}));
    wait_status(&proxy, &alice, 200, "bootstrapped from replica A");
    assert_eq!(proxy.get(D1, Some(&zoe), &[]).status, 403);

    // Granted through replica B: A follows the database, the proxy follows A.
    let r = b.admin_call(
        "PUT",
        "/v1/principals/users/zoe",
        &json!({"kind": "user", "id": "zoe", "tenant": "t1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b.admin_call(
        "POST",
        "/v1/assignments",
        &json!({"id": "zoe-guest", "principal": "User::\"zoe\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_status(&proxy, &zoe, 200, "a grant made through replica B");

    let zoes = |replica: &Portcullis| {
        let r = replica.admin_call(
            "GET",
            "/v1/assignments?principal=User::%22zoe%22",
            &json!({}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["items"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(zoes(&a), 1, "replica A lists the grant made through B");

    // Revoked through A: the proxy and B see it.
    let r = a.admin_call("DELETE", "/v1/assignments/zoe-guest", &json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    wait_status(&proxy, &zoe, 403, "a revocation made through replica A");
    assert_eq!(zoes(&b), 0);
}

/// Waits until `p`'s `/metrics` has `line`.
fn wait_metric(p: &Portcullis, line: &str) {
    let started = Instant::now();
    while !p.metrics_text().lines().any(|l| l == line) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no `{line}` in /metrics\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_policy_set_that_strands_a_route_is_refused_by_serve_and_reported_by_a_follower() {
    const USER_MANAGE: &str = "action \"user.manage\" in [ADMIN, SENSITIVE] appliesTo {\n  principal: [User, Service], resource: [User, Tenant], context: RequestContext };\n";
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let strand = |p: &Portcullis| {
        let current = p.admin_call("GET", "/v1/policies", &json!({}));
        assert_eq!(current.status, 200, "{}", current.body);
        let set = current.json();
        let schema = set["schema"].as_str().expect("schema");
        let without = schema.replace(USER_MANAGE, "");
        assert_ne!(without, schema, "the shipped schema declares user.manage");
        let candidate = json!({"files": set["files"], "schema": without});
        let etag = current.headers["etag"].clone();
        (
            p.admin_call_with("PUT", "/v1/policies", &[("if-match", &etag)], &candidate),
            p.admin_call("POST", "/v1/policies:validate", &candidate),
        )
    };

    // serve knows its routes: the set is refused before it is stored, naming the route.
    let serve = Portcullis::start(&upstream, &keys, "");
    let (put, validate) = strand(&serve);
    for r in [&put, &validate] {
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(
            r.json()["errors"][0]["message"],
            "route `manage_user`: action `user.manage` is not in the policy set in force",
            "{}",
            r.body
        );
    }
    wait_metric(&serve, "portcullis_routes_unenforceable 0");

    // control has no routes and stores it; a proxy following it reports the stranded route
    // (which denies, failing closed) until the set is rolled back.
    let control = Portcullis::start_control(&upstream, &keys, "");
    let proxy = Portcullis::start_proxy(&upstream, &keys, &control, "");
    wait_metric(&proxy, "portcullis_routes_unenforceable 0");
    let (put, _) = strand(&control);
    assert_eq!(put.status, 200, "{}", put.body);
    wait_metric(&proxy, "portcullis_routes_unenforceable 1");
    assert!(
        proxy.log().contains(
            "route `manage_user`: action `user.manage` is not in the policy set in force"
        ),
        "{}",
        proxy.log()
    );
    let version = put.json()["version"].as_i64().expect("version");
    let r = control.admin_call_with(
        "POST",
        "/v1/policies:rollback",
        &[("if-match", &format!("\"{version}\""))],
        &json!({"version": version - 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_metric(&proxy, "portcullis_routes_unenforceable 0");
    assert!(proxy.log().contains("every route is enforceable again"));
}
