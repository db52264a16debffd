//! A shutdown never dead-letters: unfinished events (some waiting for a retry) stay pending
//! and the next run delivers them. Read-ahead is bounded: a subscriber that never answers does not make evrouter's
//! memory grow with the backlog.

use std::sync::Arc;
use std::time::Duration;

use crate::support::process::RouterProcess;
use crate::support::subscriber::{distinct_successes, Subscriber};
use crate::support::{keyed_event, test_config, RedisServer, RouterApi, TestRouter};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_unfinished_events_pending_and_the_next_run_delivers_them() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    // Every event fails its first two attempts (400: retried, and the breaker stays
    // closed), so that a shutdown finds events waiting for a retry.
    let subscriber = Subscriber::start(
        Arc::new(|r: &crate::support::subscriber::Received| {
            if r.attempt <= 2 {
                (400, String::new())
            } else {
                (200, String::new())
            }
        }),
        Some(Duration::from_millis(100)),
    )
    .await;
    let mut config = test_config(&redis);
    config.delivery.lease_ttl = "1s".into();
    let router = TestRouter::start(config.clone()).await;
    router
        .subscribe(
            "slow",
            &["order.created"],
            &subscriber.url(),
            json!({"max_attempts": 5, "backoff": crate::support::fast_retries()}),
        )
        .await;
    let mut batch = Vec::new();
    for seq in 0..20u64 {
        for k in 0..5u64 {
            batch.push(keyed_event(seq * 10 + k, &format!("ord_{k}"), seq));
        }
    }
    router
        .publish_ok("order.created", &Value::Array(batch))
        .await;
    subscriber.wait_for(1, Duration::from_secs(30)).await;
    router.stop().await.expect("clean stop");
    let delivered_first = distinct_successes(&subscriber.received());
    assert!(
        subscriber.count() > 0 && delivered_first < 100,
        "{delivered_first} delivered before the stop"
    );
    let dead: i64 = {
        let mut conn = redis.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:*:dlq:*")
            .query(&mut conn)
            .expect("keys");
        keys.len() as i64
    };
    assert_eq!(dead, 0, "a shutdown dead-lettered events");
    // The next run picks up what was left.
    let router = TestRouter::start(config).await;
    subscriber
        .wait_until(Duration::from_secs(60), "every event", |log| {
            distinct_successes(log) >= 100
        })
        .await;
    router.stop().await.expect("clean stop");
    // The first run's consumer was removed once its entries were taken over.
    let mut conn = redis.conn();
    for p in 0..16 {
        let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("evr:{{order.{p}}}"))
            .arg("slow")
            .query(&mut conn)
            .expect("consumers");
        assert!(
            consumers.consumers.len() <= 1,
            "consumers pile up: {}",
            consumers.consumers.len()
        );
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_answers_leaves_memory_flat() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let silent = Subscriber::start(
        Arc::new(|_| (200, String::new())),
        Some(Duration::from_secs(3600)),
    )
    .await;
    let process = RouterProcess::start(&redis, None).await;
    process
        .subscribe(
            "silent",
            &["order.created"],
            &silent.url(),
            json!({"max_in_flight": 200, "timeout_ms": 600000}),
        )
        .await;
    let publish = async |from: u64, count: u64| {
        for chunk in (from..from + count).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|n| keyed_event(*n, &format!("ord_{}", n % 1000), *n))
                .collect();
            process
                .publish_ok("order.created", &Value::Array(batch))
                .await;
        }
    };
    publish(0, 10_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kb(process.pid());
    publish(10_000, 100_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(process.pid());
    let stats = process.stats().await;
    drop(process);
    let in_flight = stats["subscriptions"]["silent"]["in_flight"]
        .as_u64()
        .expect("in_flight");
    assert!(
        in_flight <= 200 + 16 * 2,
        "read ahead beyond the budget: {in_flight}"
    );
    assert!(
        stats["subscriptions"]["silent"]["lag"]
            .as_u64()
            .expect("lag")
            > 100_000
    );
    // 100,000 events of ~500 bytes held in memory would add well over 50 MB.
    assert!(
        after < before + 30_000,
        "RSS grew from {before} kB to {after} kB"
    );
    assert!(
        silent.count() <= 232,
        "more requests than the in-flight budget: {}",
        silent.count()
    );
}

/// A restart does not reset an event to its first attempt: the count carries over from
/// Redis's delivery counter, so a poison event still reaches the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_carry_over_a_restart() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let failing = Subscriber::with_rule(Arc::new(|_| (400, String::new()))).await;
    let mut config = test_config(&redis);
    config.delivery.lease_ttl = "1s".into();
    let spec = json!({"max_attempts": 4,
        "backoff": {"initial_ms": 30000, "max_ms": 30000, "multiplier": 1.0, "jitter": 0.0}});
    for run in 0..2 {
        let router = TestRouter::start(config.clone()).await;
        if run == 0 {
            router
                .subscribe("poison", &["order.created"], &failing.url(), spec.clone())
                .await;
            router
                .publish_ok("order.created", &keyed_event(1, "ord_p", 0))
                .await;
        }
        // One attempt per run (the retry waits 30 s, far longer than a run).
        failing.wait_for(run + 1, Duration::from_secs(10)).await;
        router.stop().await.expect("clean stop");
    }
    let attempts: Vec<u32> = failing.received().iter().map(|r| r.attempt).collect();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1] > attempts[0],
        "the restart started over: {attempts:?}"
    );
}
