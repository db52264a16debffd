//! Redis full (`maxmemory` reached under `noeviction`): publishes answer 507 `store_full`
//! and store nothing of a refused request; leases, acks and dead-letter moves go on; memory
//! comes back as acks let trimming run, and publishes are taken again. An eviction policy
//! that could drop evrouter's keys is refused under `durability = "strict"`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::subscriber::Subscriber;
use crate::support::{
    dlq_entries, eventually, fast_retries, order_event, test_config, Durability, RedisServer,
    RouterApi, RunError, StreamConfig, TestRouter,
};
use serde_json::{json, Value};

/// Twenty events of about 2 KB each.
fn padded_batch(padding: &str, round: u64) -> Value {
    Value::Array(
        (0..20)
            .map(|k| {
                let mut event = order_event(round * 100 + k, &format!("ord_{k}"));
                event["data"]["padding"] = json!(padding);
                event
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_publishes_whole_keeps_delivering_and_recovers() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        "6mb",
        "--maxmemory-policy",
        "noeviction",
    ]);
    let healthy = Arc::new(AtomicBool::new(false));
    let subscriber = {
        let healthy = healthy.clone();
        Subscriber::with_rule(Arc::new(move |_| {
            if healthy.load(Ordering::Relaxed) {
                (200, String::new())
            } else {
                (503, String::new())
            }
        }))
        .await
    };
    // Retried by its answer (a 200 saying RETRY keeps the breaker closed), then moved to
    // the DLQ after its second attempt.
    let failing =
        Subscriber::with_rule(Arc::new(|_| (200, r#"{"status":"RETRY"}"#.to_string()))).await;
    let mut config = test_config(&redis);
    config.delivery.lease_ttl = "1s".into();
    config.retention.check_interval = "300ms".into();
    // Redis's own limit is under test here, not the streams' share of it (which would
    // move the unacked entries to the dead-letter streams before Redis fills up).
    config.retention.memory_share = 0.0;
    config.streams = vec![StreamConfig {
        name: "order".into(),
        partitions: 4,
        max_age: "1s".into(),
        ..StreamConfig::default()
    }];
    let router = TestRouter::start(config).await;
    router
        .subscribe(
            "fulfillment",
            &["order.>"],
            &subscriber.url(),
            json!({"max_attempts": 1000, "backoff": fast_retries()}),
        )
        .await;
    router
        .subscribe(
            "audit",
            &["order.>"],
            &failing.url(),
            json!({"max_attempts": 2, "backoff": fast_retries()}),
        )
        .await;

    // Fill Redis: every request is 20 events of about 2 KB.
    let padding = "x".repeat(2000);
    let mut accepted = 0usize;
    let mut refusal = None;
    for round in 0..2000u64 {
        let (status, body) = router
            .publish("order.created", &padded_batch(&padding, round))
            .await;
        match status {
            200 => accepted += 20,
            _ => {
                refusal = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refusal.expect("Redis never filled up");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "store_full", "{body}");
    // Nothing of a refused request is stored; nothing acknowledged is trimmed (no group
    // has acked it all).
    assert_eq!(redis.order_entries(), accepted, "stored vs acknowledged");

    // Full, and staying full (dead-letter moves add to the memory used): leases are
    // renewed past their TTL, and dead-letter moves go on.
    let dead_before = dlq_entries(&redis, "audit").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = router
        .publish("order.created", &padded_batch(&padding, 9_000))
        .await;
    assert_eq!(status, 507, "still full: {body}");
    let holders = redis.lease_holders();
    assert_eq!(
        holders.len(),
        4,
        "every lease still held past its TTL: {holders:?}"
    );
    eventually(Duration::from_secs(30), async || {
        match dlq_entries(&redis, "audit").len() {
            n if n > dead_before => Ok(()),
            _ => Err("no dead letter moved while Redis was full".to_string()),
        }
    })
    .await;

    // The subscriber recovers: acks let the trimmer free memory, and publishes succeed.
    healthy.store(true, Ordering::Relaxed);
    eventually(Duration::from_secs(60), async || {
        let (status, body) = router
            .publish("order.created", &order_event(8_888_888, "ord_y"))
            .await;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("still refused: {status} {body}"))
        }
    })
    .await;
    let delivered = subscriber
        .wait_until(Duration::from_secs(60), "every accepted event", |log| {
            crate::support::subscriber::distinct_successes(log) > accepted
        })
        .await;
    assert!(crate::support::subscriber::distinct_successes(&delivered) > accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_refuses_a_redis_that_may_evict() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]);
    let mut config = test_config(&redis);
    config.redis.durability = Durability::Strict;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = crate::support::run_router(config, listener, async {}).await;
    match result {
        Err(RunError::Evicting(why)) => assert!(why.contains("allkeys-lru"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
