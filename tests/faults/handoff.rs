//! Partitions moving between instances under load: instances join and leave (SIGTERM)
//! while a slow subscriber is being served. A leaving owner hands each partition over only
//! once its requests in flight are answered and acked, so the subscriber's full log of
//! requests (redeliveries included) never shows an event of a key still being served after
//! a newer event of that key was answered 2xx; every event arrives, and every instance
//! exits 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::process::RouterProcess;
use crate::support::subscriber::{distinct_events, inversions, Subscriber};
use crate::support::{keyed_event, RedisServer};
use serde_json::Value;

fn write_config(dir: &tempfile::TempDir, subscriber: &Subscriber) -> std::path::PathBuf {
    let path = dir.path().join("evrouter.toml");
    std::fs::write(
        &path,
        format!(
            r#"[delivery]
lease_ttl = "1s"

[[subscriptions]]
name = "fulfillment"
topics = ["order.>"]
endpoints = ["{}"]
timeout_ms = 10000
max_in_flight = 64
backoff = {{ initial_ms = 10, max_ms = 100, multiplier = 2.0, jitter = 0.2 }}
max_attempts = 100
"#,
            subscriber.url()
        ),
    )
    .expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_under_load_never_invert_a_key() {
    let _heavy = crate::support::heavy().await;
    let redis = RedisServer::start();
    let subscriber = Subscriber::start_with_delays(
        Arc::new(|_| (200, String::new())),
        Some((Duration::from_millis(50), Duration::from_millis(200))),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, &subscriber);
    // The publishing instance stays; the two others are replaced one after the other.
    let publisher = RouterProcess::start(&redis, Some(&config)).await;
    let mut others = vec![
        RouterProcess::start(&redis, Some(&config)).await,
        RouterProcess::start(&redis, Some(&config)).await,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let base = publisher.base.clone();
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = crate::support::client();
            let mut published: HashMap<String, Vec<u64>> = HashMap::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (0..24)
                    .map(|k| {
                        let key = format!("ord_{k}");
                        published.entry(key.clone()).or_default().push(seq);
                        keyed_event(seq * 100 + k, &key, seq)
                    })
                    .collect();
                let answer = http
                    .post(format!("{base}/v1/publish/order.created"))
                    .json(&Value::Array(batch))
                    .send()
                    .await
                    .expect("publish");
                assert!(answer.status().is_success(), "publish: {}", answer.status());
                seq += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            published
        })
    };
    // Six changes of membership, a few seconds apart: one leaves, a new one joins.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut leaving = others.remove(round % 2);
        let status = leaving.terminate();
        assert!(status.success(), "round {round}: exit status {status}");
        others.insert(round % 2, RouterProcess::start(&redis, Some(&config)).await);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let published = load.await.expect("publisher");
    let total: usize = published.values().map(Vec::len).sum();
    let log = subscriber
        .wait_until(Duration::from_secs(60), "every event", |log| {
            distinct_events(log) >= total
        })
        .await;
    let inverted = inversions(&log);
    assert!(
        inverted.is_empty(),
        "{} requests were still served after a newer event of their key was answered (key, older, newer): {:?}",
        inverted.len(),
        &inverted[..inverted.len().min(10)]
    );
    // Per key, the first arrivals are every event in publish order.
    let mut first: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in &log {
        if seen.insert(r.event_id.clone()) {
            first
                .entry(r.key.as_str())
                .or_default()
                .push(r.seq.expect("seq"));
        }
    }
    for (key, expected) in &published {
        assert_eq!(first.get(key.as_str()), Some(expected), "key {key}");
    }
    drop(others);
    drop(publisher);
}
