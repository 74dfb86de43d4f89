//! Shared rate-limit counters against a real `redis-server` of the test's own.

use std::time::Duration;

use portcullis_l2::rate::{SharedRateLimits, SharedStep};
use portcullis_sinks::testing::{RedisServer, free_port};

#[tokio::test]
async fn two_clients_count_against_one_bucket_and_a_limited_one_is_told_how_long_to_wait() {
    let redis = RedisServer::start(free_port());
    let one = SharedRateLimits::new(&redis.url(), "rl", Duration::from_secs(2)).unwrap();
    let two = SharedRateLimits::new(&redis.url(), "rl", Duration::from_secs(2)).unwrap();
    // Three a minute, all three at once: one every 20 s, capacity 60 s.
    let interval = Duration::from_secs(20);
    let capacity = Duration::from_secs(60);
    let mut allowed = 0;
    for i in 0..3 {
        let client = if i % 2 == 0 { &one } else { &two };
        match client
            .step("route:client:10.0.0.1", interval, capacity)
            .await
            .unwrap()
        {
            SharedStep::Allowed { used } => {
                allowed += 1;
                // Each allowed request takes one interval more of the capacity.
                let expected = interval * allowed;
                assert!(
                    used <= expected && used > expected - Duration::from_secs(1),
                    "{used:?}"
                );
            }
            SharedStep::Limited { wait } => panic!("limited too early, wait {wait:?}"),
        }
    }
    match two
        .step("route:client:10.0.0.1", interval, capacity)
        .await
        .unwrap()
    {
        SharedStep::Limited { wait } => {
            assert!(
                wait > Duration::from_secs(19) && wait <= interval,
                "{wait:?}"
            );
        }
        other => panic!("the fourth in a minute passed: {other:?}"),
    }
    // Another key has its own bucket.
    assert!(matches!(
        one.step("route:client:10.0.0.2", interval, capacity)
            .await
            .unwrap(),
        SharedStep::Allowed { .. }
    ));
}

#[tokio::test]
async fn a_bucket_refills_and_its_key_fades_once_full_again() {
    let redis = RedisServer::start(free_port());
    let limits = SharedRateLimits::new(&redis.url(), "rl", Duration::from_secs(2)).unwrap();
    let interval = Duration::from_millis(300);
    let capacity = Duration::from_millis(300);
    assert!(matches!(
        limits.step("k", interval, capacity).await.unwrap(),
        SharedStep::Allowed { .. }
    ));
    assert!(matches!(
        limits.step("k", interval, capacity).await.unwrap(),
        SharedStep::Limited { .. }
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("rl:k")
        .query(
            &mut redis::Client::open(redis.url())
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(exists, 0, "a full bucket's key is gone");
    assert!(matches!(
        limits.step("k", interval, capacity).await.unwrap(),
        SharedStep::Allowed { .. }
    ));
}

#[tokio::test]
async fn redis_away_is_an_error_for_the_caller_to_fall_back_on() {
    let limits = SharedRateLimits::new(
        &format!("redis://127.0.0.1:{}", free_port()),
        "rl",
        Duration::from_millis(200),
    )
    .unwrap();
    let answer = limits
        .step("k", Duration::from_secs(1), Duration::from_secs(1))
        .await;
    assert!(
        matches!(answer, Err(portcullis_l2::L2Error::Unavailable(_))),
        "{answer:?}"
    );
}
