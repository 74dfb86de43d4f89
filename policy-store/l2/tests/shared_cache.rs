//! The shared cache against a real `redis-server` of the test's own.

use std::time::Duration;

use portcullis_engine::snapshot::{SliceValue, StateSlice};
use portcullis_l2::{L2Error, SharedCache};
use portcullis_model::{
    EntityAttributes, EntityRecord, EntityRef, Principal, PrincipalAttributes, PrincipalKind,
    PrincipalStatus, principal_ref,
};
use portcullis_sinks::testing::{RedisServer, free_port};

fn alice(status: PrincipalStatus) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        id: String::from("alice"),
        status,
        tenant: Some(String::from("acme")),
        groups: Vec::new(),
        attributes: PrincipalAttributes::default(),
        trusted_devices: Vec::new(),
    }
}

fn slice(revision: i64, status: PrincipalStatus) -> StateSlice {
    StateSlice {
        revision,
        value: Some(SliceValue::Principal((alice(status), Vec::new()))),
    }
}

fn key() -> EntityRef {
    principal_ref(PrincipalKind::User, "alice")
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_slice_is_replaced_only_by_a_newer_one_and_a_new_generation_hides_all() {
    let redis = RedisServer::start(free_port());
    let cache = SharedCache::new(&redis.url(), "pc", Duration::from_secs(2)).unwrap();
    assert_eq!(cache.get(&key()).await.unwrap(), None);

    assert_eq!(
        cache
            .put(&[(key(), slice(5, PrincipalStatus::Active))], TTL)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cache.get(&key()).await.unwrap(),
        Some(slice(5, PrincipalStatus::Active))
    );
    // A late write of an older revision (a read-through racing a commit) changes nothing;
    // neither does the same revision again.
    assert_eq!(
        cache
            .put(&[(key(), slice(4, PrincipalStatus::Suspended))], TTL)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        cache
            .put(&[(key(), slice(5, PrincipalStatus::Suspended))], TTL)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        cache.get(&key()).await.unwrap(),
        Some(slice(5, PrincipalStatus::Active))
    );
    // A newer one replaces it; so does a deletion (no principal) at a newer revision.
    cache
        .put(&[(key(), slice(7, PrincipalStatus::Suspended))], TTL)
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key()).await.unwrap(),
        Some(slice(7, PrincipalStatus::Suspended))
    );
    let deleted = StateSlice {
        revision: 8,
        value: None,
    };
    cache.put(&[(key(), deleted.clone())], TTL).await.unwrap();
    assert_eq!(cache.get(&key()).await.unwrap(), Some(deleted));

    // The key carries the generation, and a time to live.
    let stored = redis.cli(&["GET", "pc:0:User::\"alice\""]);
    assert!(stored.starts_with("8\n"), "{stored}");
    let ttl: u64 = redis
        .cli(&["TTL", "pc:0:User::\"alice\""])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");

    // A new generation: nothing written before is read any more.
    assert_eq!(cache.new_generation().await.unwrap(), 1);
    assert_eq!(cache.get(&key()).await.unwrap(), None);
    cache
        .put(&[(key(), slice(3, PrincipalStatus::Active))], TTL)
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key()).await.unwrap(),
        Some(slice(3, PrincipalStatus::Active))
    );
}

#[tokio::test]
async fn many_slices_go_in_batches_and_what_is_not_a_slice_is_an_error() {
    let redis = RedisServer::start(free_port());
    let cache = SharedCache::new(&redis.url(), "pc", Duration::from_secs(2)).unwrap();
    let many: Vec<(EntityRef, StateSlice)> = (0..600)
        .map(|i| {
            let mut p = alice(PrincipalStatus::Active);
            p.id = format!("user-{i}");
            (
                p.entity_ref(),
                StateSlice {
                    revision: 2,
                    value: Some(SliceValue::Principal((p, Vec::new()))),
                },
            )
        })
        .collect();
    assert_eq!(cache.put(&many, TTL).await.unwrap(), 600);
    let last = principal_ref(PrincipalKind::User, "user-599");
    assert_eq!(cache.get(&last).await.unwrap().map(|s| s.revision), Some(2));

    // Entities a sidecar fetches live beside principals, under their own keys.
    let document = EntityRef::new("Document", "d1").unwrap();
    let record = StateSlice {
        revision: 3,
        value: Some(SliceValue::Entity(EntityRecord {
            uid: document.clone(),
            parents: vec![EntityRef::new("Space", "s1").unwrap()],
            attributes: EntityAttributes::default(),
        })),
    };
    assert_eq!(
        cache
            .put(&[(document.clone(), record.clone())], TTL)
            .await
            .unwrap(),
        1
    );
    assert_eq!(cache.get(&document).await.unwrap(), Some(record.clone()));
    assert!(record.is_of(&document));
    assert!(!record.is_of(&EntityRef::new("Document", "d2").unwrap()));
    assert!(!slice(1, PrincipalStatus::Active).is_of(&document));

    redis.cli(&["SET", "pc:0:User::\"alice\"", "garbage"]);
    assert!(matches!(cache.get(&key()).await, Err(L2Error::Corrupt(_))));
}

#[tokio::test]
async fn redis_away_is_an_error_at_once_and_a_restarted_redis_is_used_again() {
    let port = free_port();
    let cache = SharedCache::new(
        &format!("redis://127.0.0.1:{port}/"),
        "pc",
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(matches!(
        cache.get(&key()).await,
        Err(L2Error::Unavailable(_))
    ));
    // Within a second of a failed connect, no new one is tried.
    let again = cache.get(&key()).await.unwrap_err().to_string();
    assert!(again.contains("retrying shortly"), "{again}");

    let redis = RedisServer::start(port);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cache
        .put(&[(key(), slice(1, PrincipalStatus::Active))], TTL)
        .await
        .unwrap();
    drop(redis);
    assert!(matches!(
        cache.get(&key()).await,
        Err(L2Error::Unavailable(_))
    ));
    let _redis = RedisServer::start(port);
    // The connection reconnects by itself; the restarted server is empty.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get(&key()).await {
            Ok(found) => {
                assert_eq!(found, None);
                break;
            }
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "never reconnected");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
