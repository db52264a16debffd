//! A flood of poison messages (events a subscriber always refuses): they go to the DLQ,
//! which stays within its cap (`retention.dlq_max_len`, `drop_oldest` here), while the
//! other keys' events are delivered all along.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::subscriber::{distinct_successes, Received, Subscriber};
use crate::support::{
    eventually, fast_retries, order_event, test_config, RedisServer, RouterApi, TestRouter,
    WhenFull,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_fill_the_dlq_to_its_cap_and_others_flow() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let subscriber = Subscriber::with_rule(Arc::new(|r: &Received| {
        if r.key.starts_with("poison") {
            (400, String::new())
        } else {
            (200, String::new())
        }
    }))
    .await;
    let mut config = test_config(&redis);
    config.retention.dlq_max_len = 100;
    config.retention.dlq_when_full = WhenFull::DropOldest;
    let router = TestRouter::start(config).await;
    router
        .subscribe(
            "shipping",
            &["order.>"],
            &subscriber.url(),
            serde_json::json!({"max_attempts": 2, "backoff": fast_retries()}),
        )
        .await;
    let mut good = 0;
    for round in 0..20u64 {
        let batch: Vec<Value> = (0..100u64)
            .map(|k| {
                let key = if k % 2 == 0 {
                    format!("poison_{k}")
                } else {
                    format!("good_{k}")
                };
                order_event(round * 1000 + k, &key)
            })
            .collect();
        good += 50;
        router
            .publish_ok("order.created", &Value::Array(batch))
            .await;
    }
    subscriber
        .wait_until(Duration::from_secs(60), "every good event", |log| {
            distinct_successes(log) >= good
        })
        .await;
    // 1,000 poison events over 16 partitions: each partition's DLQ holds about its cap.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("evr:{order.*}:dlq:shipping")
        .query(&mut conn)
        .expect("keys");
    eventually(Duration::from_secs(30), async || {
        let lens: Vec<usize> = keys
            .iter()
            .map(|k| {
                redis::cmd("XLEN")
                    .arg(k)
                    .query(&mut redis.conn())
                    .expect("xlen")
            })
            .collect();
        let total: usize = lens.iter().sum();
        // MAXLEN ~ trims whole nodes of 100 entries.
        if lens.iter().all(|l| *l <= 200) && total > 0 {
            Ok(())
        } else {
            Err(format!("dead-letter streams: {lens:?}"))
        }
    })
    .await;
}
