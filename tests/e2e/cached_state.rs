//! Cached state mode (`state.mode: cached`): `portcullis proxy` holding the shared part of
//! the state and fetching users and services on first use — from the shared cache in a real
//! Redis that the control plane writes, else from the control plane — beside a proxy that
//! holds the whole state, both following one `portcullis serve`.

use serde_json::json;

use crate::distribution::wait_status;
use crate::harness::{Keys, Portcullis, Upstream};
use crate::world;
use portcullis_sinks::testing::{RedisServer, free_port};

const D1: &str = "/v1/spaces/s1/documents/d1";

/// Requests whose outcome depends on who asks.
const REQUESTS: [(&str, &str); 7] = [
    ("GET", D1),
    ("GET", "/v1/spaces/s1/documents/secret"),
    ("GET", "/v1/spaces/s1"),
    ("GET", "/v1/spaces/x1"),
    ("GET", "/v1/tenants/t1"),
    ("GET", "/v1/spaces/old/documents/od"),
    ("DELETE", D1),
];

/// The world's users (bob's manager is mia), and one the store does not hold.
const USERS: [&str; 9] = [
    "alice", "gina", "dora", "sam", "carl", "tom", "mia", "bob", "zoe",
];

fn cached_config(redis: Option<&RedisServer>, extra: &str) -> String {
    let redis = redis.map_or(String::new(), |r| {
        format!("  redis:\n    url: {}\n", r.url())
    });
    format!("state:\n  mode: cached\n{redis}{extra}")
}

/// `(status, reason)` of each request for each user.
fn outcomes(p: &Portcullis, keys: &Keys) -> Vec<(String, u16, String)> {
    let mut all = Vec::new();
    for user in USERS {
        let token = keys.token(user, json!({}));
        for (method, path) in REQUESTS {
            let r = p.request(method, path, Some(&token), &[]);
            let reason = r.json()["reason"].as_str().unwrap_or("").to_owned();
            all.push((format!("{user} {method} {path}"), r.status, reason));
        }
    }
    all
}

fn count(p: &Portcullis, name: &str, labels: &[(&str, &str)]) -> f64 {
    p.metric_sum(name, labels).unwrap_or(0.0)
}

fn misses(p: &Portcullis) -> f64 {
    count(
        p,
        "portcullis_state_cache_lookups_total",
        &[("result", "miss")],
    )
}

fn fetches(p: &Portcullis, source: &str, outcome: &str) -> f64 {
    count(
        p,
        "portcullis_state_cache_fetches_total",
        &[("source", source), ("outcome", outcome)],
    )
}

/// Fetches from the control plane, whatever their outcome.
fn asked_control_plane(p: &Portcullis) -> f64 {
    count(
        p,
        "portcullis_state_cache_fetches_total",
        &[("source", "control_plane")],
    )
}

#[test]
fn a_cached_proxy_decides_as_a_full_one_and_evicts_exactly_what_changed() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let redis = RedisServer::start(free_port());
    let mut control = Portcullis::start(
        &upstream,
        &keys,
        &format!("state:\n  redis:\n    url: {}\n", redis.url()),
    );
    control.seed(world::import());
    let full = Portcullis::start_proxy(&upstream, &keys, &control, "");
    let cached =
        Portcullis::start_proxy(&upstream, &keys, &control, &cached_config(Some(&redis), ""));

    // Every request decided alike, allowed or refused for the same reason.
    let expected = outcomes(&full, &keys);
    assert_eq!(outcomes(&cached, &keys), expected);
    assert!(expected.iter().any(|(_, status, _)| *status == 200));
    assert!(expected.iter().any(|(_, status, _)| *status == 403));
    assert!(
        expected
            .iter()
            .any(|(_, _, reason)| reason == "unknown_principal")
    );
    // Each user fetched once, from the control plane: the seed was a bulk import, so the
    // shared cache began a new generation and holds nobody yet.
    let first = misses(&cached);
    assert_eq!(first, USERS.len() as f64, "{}", cached.metrics_text());
    assert!(fetches(&cached, "shared_cache", "absent") >= 1.0);
    assert_eq!(fetches(&cached, "control_plane", "found"), first);
    // Asked again: all from the cache.
    assert_eq!(outcomes(&cached, &keys), expected);
    assert_eq!(misses(&cached), first);
    // The control plane wrote each slice it served through to the shared cache.
    cached.wait_for(
        || {
            !redis
                .cli(&["KEYS", "portcullis:state:*alice*"])
                .trim()
                .is_empty()
        },
        "alice's slice in Redis",
    );

    // A second cached proxy finds alice in the shared cache: the control plane is not asked.
    let second =
        Portcullis::start_proxy(&upstream, &keys, &control, &cached_config(Some(&redis), ""));
    let alice = keys.token("alice", json!({}));
    assert_eq!(second.get(D1, Some(&alice), &[]).status, 200);
    assert_eq!(fetches(&second, "shared_cache", "found"), 1.0);
    assert_eq!(asked_control_plane(&second), 0.0);

    // Alice is suspended: her next request is refused at both, nobody else is evicted, and
    // the second proxy reads her new slice from the shared cache (written before the
    // change was announced).
    let before = misses(&cached);
    let r = control.admin_call(
        "PUT",
        "/v1/principals/users/alice",
        &json!({"kind": "user", "id": "alice", "tenant": "t1", "status": "suspended"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(
        &cached,
        &alice,
        403,
        "alice's suspension at the cached proxy",
    );
    wait_status(
        &second,
        &alice,
        403,
        "alice's suspension at the second proxy",
    );
    assert_eq!(full.get(D1, Some(&alice), &[]).status, 403);
    for user in ["gina", "dora", "carl"] {
        let token = keys.token(user, json!({}));
        assert_eq!(cached.get(D1, Some(&token), &[]).status, 200, "{user}");
    }
    assert_eq!(misses(&cached), before + 1.0, "only alice fetched again");
    assert_eq!(
        count(
            &cached,
            "portcullis_state_cache_evictions_total",
            &[("cause", "changed")]
        ),
        1.0
    );
    assert_eq!(fetches(&second, "shared_cache", "found"), 2.0);
    assert_eq!(asked_control_plane(&second), 0.0);

    // Redis dies: a miss falls back to the control plane.
    drop(redis);
    let dora = keys.token("dora", json!({}));
    assert_eq!(
        second.get(D1, Some(&dora), &[]).status,
        200,
        "{}",
        second.log()
    );
    assert!(fetches(&second, "shared_cache", "error") >= 1.0);
    assert_eq!(fetches(&second, "control_plane", "found"), 1.0);

    // The control plane dies too: principals held keep being enforced; one not held is
    // refused with 503 state_unavailable, never decided on a guess; back with the control
    // plane.
    control.kill9();
    assert_eq!(second.get(D1, Some(&dora), &[]).status, 200);
    assert_eq!(second.get(D1, Some(&alice), &[]).status, 403);
    let gina = keys.token("gina", json!({}));
    let r = second.get(D1, Some(&gina), &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "state_unavailable");
    control.restart();
    wait_status(
        &second,
        &gina,
        200,
        "gina fetched once the control plane is back",
    );

    // A bulk import is a rebuild: every cached principal is evicted, and decided anew (the
    // import makes alice active again).
    control.seed(world::import());
    wait_status(&cached, &alice, 200, "alice active again after the import");
    assert!(
        count(
            &cached,
            "portcullis_state_cache_evictions_total",
            &[("cause", "cleared")]
        ) >= 1.0,
        "{}",
        cached.metrics_text()
    );
    assert_eq!(outcomes(&cached, &keys), outcomes(&full, &keys));
}

/// Users with many assignments each: held whole, the flood below would take far more
/// memory than the bound.
fn crowd(users: usize, assignments: usize) -> portcullis_store::Import {
    let mut import = world::import();
    for n in 0..users {
        let id = format!("crowd-{n}");
        import.principals.push(world::user(&id, "t1"));
        for k in 0..assignments {
            import.assignments.push(world::grant(
                &format!("{id}-{k}"),
                &format!("User::\"{id}\""),
                "guest",
                Some(&format!("Space::\"crowd-space-{k}\"")),
            ));
        }
    }
    import
}

#[test]
fn a_flood_of_distinct_principals_stays_within_the_cache_bound() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let control = Portcullis::start(&upstream, &keys, "");
    let (users, assignments) = (3000, 40);
    control.seed(crowd(users, assignments));
    let bound: u64 = std::env::var("PORTCULLIS_E2E_CACHE_BOUND")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1024 * 1024);
    let cached = Portcullis::start_proxy(
        &upstream,
        &keys,
        &control,
        &cached_config(None, &format!("  cache_max_bytes: {bound}\n")),
    );
    let alice = keys.token("alice", json!({}));
    for _ in 0..100 {
        assert_eq!(cached.get(D1, Some(&alice), &[]).status, 200);
    }
    let rss_before = cached.rss_bytes();
    for n in 0..users {
        let token = keys.token(&format!("crowd-{n}"), json!({}));
        let r = cached.get(D1, Some(&token), &[]);
        // Decided: the principal was fetched, with its assignments.
        assert_eq!(r.json()["reason"], "no_permit", "{}", r.body);
    }
    for n in 0..2000 {
        let token = keys.token(&format!("stranger-{n}"), json!({}));
        let r = cached.get(D1, Some(&token), &[]);
        assert_eq!(r.json()["reason"], "unknown_principal", "{}", r.body);
    }
    // Evictions are applied in batches: within a second the cache is back under its bound.
    let gauge = |name| count(&cached, name, &[]);
    cached.wait_for(
        || gauge("portcullis_state_cache_weighted_bytes") <= bound as f64,
        "the cache back within its bound",
    );
    let entries = gauge("portcullis_state_cache_entries");
    let grown = cached.rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "{users} users with {assignments} assignments and 2000 strangers: {entries} held, RSS grew {} KiB",
        grown / 1024
    );
    // Fewer than half of the 5000 fetched are still held.
    assert!(entries > 10.0 && entries < 2500.0, "{entries} entries held");
    assert!(grown < 24 * 1024 * 1024, "RSS grew {grown} bytes");
    // Alice, evicted by the flood or not, is still decided right.
    assert_eq!(cached.get(D1, Some(&alice), &[]).status, 200);
}

/// The documents the requests above read; the control plane below holds only tenants and
/// spaces in its shared view, so cached proxies fetch these.
const DOCUMENTS: [&str; 3] = ["d1", "secret", "od"];

#[test]
fn a_cached_proxy_fetches_the_documents_its_control_plane_does_not_hold() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let redis = RedisServer::start(free_port());
    let state = |held: &str| format!("state:\n{held}  redis:\n    url: {}\n", redis.url());
    let mut control = Portcullis::start(
        &upstream,
        &keys,
        &state("  held_entity_types: [Tenant, Space]\n"),
    );
    control.seed(world::import());
    let full = Portcullis::start_proxy(&upstream, &keys, &control, "");
    let cached =
        Portcullis::start_proxy(&upstream, &keys, &control, &cached_config(Some(&redis), ""));

    // Decided as the full proxy decides, each user and each document fetched once.
    let expected = outcomes(&full, &keys);
    assert_eq!(outcomes(&cached, &keys), expected);
    let first = misses(&cached);
    assert_eq!(
        first,
        (USERS.len() + DOCUMENTS.len()) as f64,
        "{}",
        cached.metrics_text()
    );
    assert_eq!(outcomes(&cached, &keys), expected);
    assert_eq!(misses(&cached), first);
    cached.wait_for(
        || {
            !redis
                .cli(&["KEYS", "portcullis:state:*Document*d1*"])
                .trim()
                .is_empty()
        },
        "d1's slice in Redis",
    );

    // The document is archived: refused at once at both proxies; only it is evicted and
    // fetched again.
    let alice = keys.token("alice", json!({}));
    assert_eq!(cached.get(D1, Some(&alice), &[]).status, 200);
    let r = control.admin_call(
        "PUT",
        "/v1/entities/Document/d1",
        &json!({"uid": "Document::\"d1\"", "parents": ["Space::\"s1\""], "attributes": {"tenant": "t1", "archived": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&cached, &alice, 403, "d1 archived at the cached proxy");
    assert_eq!(full.get(D1, Some(&alice), &[]).status, 403);
    assert_eq!(misses(&cached), first + 1.0, "only d1 fetched again");
    assert_eq!(
        count(
            &cached,
            "portcullis_state_cache_evictions_total",
            &[("cause", "changed")]
        ),
        1.0
    );
    let expected = outcomes(&full, &keys);
    assert_eq!(outcomes(&cached, &keys), expected);

    // The control plane dies: documents held keep being decided; one never fetched is
    // refused with 503 state_unavailable, and decided once the control plane is back.
    control.kill9();
    drop(redis);
    assert_eq!(cached.get(D1, Some(&alice), &[]).status, 403);
    let d2 = "/v1/spaces/s1/documents/d2";
    let r = cached.get(d2, Some(&alice), &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "state_unavailable");

    // It comes back holding every entity: the cached proxy, holding fewer, bootstraps the
    // shared part anew at the next change instead of patching it, and decides as before.
    let config = std::fs::read_to_string(&control.config_file).unwrap();
    let config = config.replace("  held_entity_types: [Tenant, Space]\n", "");
    std::fs::write(&control.config_file, config).unwrap();
    control.restart();
    assert_eq!(full.get(d2, Some(&alice), &[]).status, 200);
    let r = control.admin_call(
        "PUT",
        "/v1/entities/Document/d9",
        &json!({"uid": "Document::\"d9\"", "parents": ["Space::\"s1\""], "attributes": {"tenant": "t1"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    cached.wait_for(
        || {
            count(
                &cached,
                "portcullis_state_cache_evictions_total",
                &[("cause", "cleared")],
            ) >= 1.0
        },
        "the shared part bootstrapped anew",
    );
    assert_eq!(cached.get(d2, Some(&alice), &[]).status, 200);
    let before = misses(&cached);
    assert_eq!(outcomes(&cached, &keys), outcomes(&full, &keys));
    assert_eq!(
        misses(&cached),
        before + USERS.len() as f64 - 1.0,
        "users fetched again (alice already was), documents held"
    );
}
