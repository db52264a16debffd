//! Several evrouter processes on one Redis: they split the partitions, and when one is
//! killed (kill -9) or paused past its lease, the others take its partitions over without
//! losing an event or breaking per-key order.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::process::RouterProcess;
use support::subscriber::{distinct_events, Received, Subscriber};
use support::{eventually, keyed_event, RedisServer, RouterApi};

/// A subscriber answering 200 after 2 ms, and two evrouter processes subscribed to it
/// (the folder holds their config and must outlive them).
async fn two_instances(
    redis: &RedisServer,
) -> (Subscriber, tempfile::TempDir, RouterProcess, RouterProcess) {
    let subscriber = Subscriber::start(
        Arc::new(|_| (200, String::new())),
        Some(Duration::from_millis(2)),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, &subscriber);
    let a = RouterProcess::start(redis, Some(&config)).await;
    let b = RouterProcess::start(redis, Some(&config)).await;
    (subscriber, dir, a, b)
}

fn write_config(dir: &tempfile::TempDir, subscriber: &Subscriber) -> std::path::PathBuf {
    let path = dir.path().join("evrouter.toml");
    std::fs::write(
        &path,
        format!(
            "[delivery]\nlease_ttl = \"1s\"\n\n[[subscriptions]]\nname = \"fulfillment\"\ntopics = [\"order.>\"]\nendpoints = [\"{}\"]\nbackoff = {{ initial_ms = 10, max_ms = 100, multiplier = 2.0, jitter = 0.2 }}\nmax_attempts = 100\n",
            subscriber.url()
        ),
    )
    .expect("config");
    path
}

fn lease_holders(redis: &RedisServer) -> HashSet<String> {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("evr:{order.*}:lease")
        .query(&mut conn)
        .expect("keys");
    keys.iter()
        .filter_map(|k| {
            redis::cmd("GET")
                .arg(k)
                .query::<Option<String>>(&mut conn)
                .ok()
                .flatten()
        })
        .collect()
}

/// Every event arrived, and per key the first arrivals are in publish order (redeliveries
/// after a takeover may repeat events, never reorder them).
fn assert_complete_and_ordered(log: &[Received], published: &HashMap<String, Vec<u64>>) {
    let mut first_seen: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut seen = HashSet::new();
    for r in log {
        if seen.insert(r.event_id.clone()) {
            first_seen
                .entry(r.key.as_str())
                .or_default()
                .push(r.seq.expect("seq"));
        }
    }
    for (key, expected) in published {
        let got = first_seen.get(key.as_str()).cloned().unwrap_or_default();
        assert_eq!(&got, expected, "key {key}: lost or out of order");
    }
}

async fn publish_rounds(
    router: &impl RouterApi,
    rounds: std::ops::Range<u64>,
    keys: usize,
    published: &mut HashMap<String, Vec<u64>>,
) {
    for seq in rounds {
        let batch: Vec<Value> = (0..keys)
            .map(|k| {
                let key = format!("ord_{k}");
                published.entry(key.clone()).or_default().push(seq);
                keyed_event(seq * 1000 + k as u64, &key, seq)
            })
            .collect();
        router
            .publish_ok("order.created", &Value::Array(batch))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_partitions_and_kill_9_loses_nothing() {
    let redis = RedisServer::start();
    let (subscriber, _dir, a, b) = two_instances(&redis).await;
    let mut published = HashMap::new();
    publish_rounds(&a, 0..20, 50, &mut published).await;
    // Both hold leases once the rebalance settles.
    eventually(Duration::from_secs(5), async || {
        let holders = lease_holders(&redis);
        if holders.len() == 2 {
            Ok(())
        } else {
            Err(format!(
                "the partitions were not split between the two instances: {holders:?}"
            ))
        }
    })
    .await;
    publish_rounds(&a, 20..40, 50, &mut published).await;
    b.signal("KILL");
    publish_rounds(&a, 40..60, 50, &mut published).await;
    let total: usize = published.values().map(Vec::len).sum();
    subscriber
        .wait_until(Duration::from_secs(60), "every event", |log| {
            distinct_events(log) >= total
        })
        .await;
    assert_complete_and_ordered(&subscriber.received(), &published);
    assert_eq!(
        lease_holders(&redis).len(),
        1,
        "the survivor holds every partition"
    );
    drop(b);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_loses_its_partitions_and_nothing_is_lost() {
    let redis = RedisServer::start();
    let (subscriber, _dir, a, b) = two_instances(&redis).await;
    let mut published = HashMap::new();
    publish_rounds(&a, 0..20, 40, &mut published).await;
    b.signal("STOP");
    publish_rounds(&a, 20..40, 40, &mut published).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.signal("CONT");
    publish_rounds(&a, 40..60, 40, &mut published).await;
    let total: usize = published.values().map(Vec::len).sum();
    subscriber
        .wait_until(Duration::from_secs(60), "every event", |log| {
            distinct_events(log) >= total
        })
        .await;
    assert_complete_and_ordered(&subscriber.received(), &published);
}
