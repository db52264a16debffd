//! Several evrouter processes on one Redis: they split the partitions, and when one is
//! killed (kill -9) or paused past its lease, the others take its partitions over without
//! losing an event or breaking per-key order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::support::process::RouterProcess;
use crate::support::subscriber::{distinct_events, Received, Subscriber};
use crate::support::{eventually, keyed_event, wait_for_holders, RedisServer, RouterApi};
use serde_json::Value;

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
    let _heavy = crate::support::heavy().await;
    let redis = RedisServer::start();
    let (subscriber, _dir, a, b) = two_instances(&redis).await;
    let mut published = HashMap::new();
    publish_rounds(&a, 0..20, 50, &mut published).await;
    // Both hold leases once the rebalance settles.
    wait_for_holders(
        &redis,
        2,
        "the partitions were not split between the two instances",
    )
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
        redis.lease_holders().iter().collect::<HashSet<_>>().len(),
        1,
        "the survivor holds every partition"
    );
    drop(b);
    drop(a);
}

/// A config for two instances whose subscriber fails every attempt of one event in five
/// (those go to the DLQ after two attempts, through the fenced dead-letter script), with
/// `extra` lines added to the subscription. The breaker is kept out of it: a round's
/// failures all at once would open it, and with two attempts the events waiting behind it
/// would be dead-lettered too.
fn failing_config(
    dir: &tempfile::TempDir,
    subscriber: &Subscriber,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("evrouter.toml");
    std::fs::write(
        &path,
        format!(
            "[delivery]\nlease_ttl = \"3s\"\n\n[[subscriptions]]\nname = \"fulfillment\"\ntopics = [\"order.>\"]\nendpoints = [\"{}\"]\nbackoff = {{ initial_ms = 10, max_ms = 100, multiplier = 2.0, jitter = 0.2 }}\nmax_attempts = 2\ntimeout_ms = 1000\nbreaker = {{ window = 1000, min_calls = 1000 }}\n{extra}\n",
            subscriber.url()
        ),
    )
    .expect("config");
    path
}

/// The subscriber's rule: events whose `data.seq` is a multiple of five always fail.
fn every_fifth_fails() -> crate::support::subscriber::Rule {
    Arc::new(|r: &Received| {
        if r.seq.is_some_and(|s| s.is_multiple_of(5)) {
            (500, String::new())
        } else {
            (200, String::new())
        }
    })
}

/// Every published event ended where it should: a success, or (one in five) the DLQ;
/// nothing is left pending; successes came in publish order per key.
async fn assert_settled(
    redis: &RedisServer,
    subscriber: &Subscriber,
    published: &HashMap<String, Vec<u64>>,
) {
    let should_fail = |seq: u64| seq.is_multiple_of(5);
    let expected_dead: usize = published
        .values()
        .map(|seqs| seqs.iter().filter(|s| should_fail(**s)).count())
        .sum();
    let expected_ok: usize = published.values().map(Vec::len).sum::<usize>() - expected_dead;
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        subscriber.wait_until(Duration::from_secs(60), "every success", |log| {
            crate::support::subscriber::distinct_successes(log) >= expected_ok
        }),
    )
    .await;
    if done.is_err() {
        let log = subscriber.received();
        let ok: HashSet<&str> = log
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.event_id.as_str())
            .collect();
        let mut missing = Vec::new();
        for (key, seqs) in published {
            for seq in seqs.iter().filter(|s| !should_fail(**s)) {
                let k: u64 = key.trim_start_matches("ord_").parse().unwrap_or(0);
                let id = keyed_event(seq * 1000 + k, key, *seq)["event_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if !ok.contains(id.as_str()) {
                    let tries = log.iter().filter(|r| r.event_id == id).count();
                    missing.push((key.clone(), *seq, tries));
                }
            }
        }
        missing.sort();
        eprintln!("missing successes: {missing:?}");
    }
    if done.is_err() {
        let mut conn = redis.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:{order.*}")
            .query(&mut conn)
            .expect("keys");
        for key in keys.iter().filter(|k| k.ends_with('}')) {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(key)
                .arg("fulfillment")
                .query(&mut conn)
                .expect("p");
            let groups: redis::Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(key)
                .query(&mut conn)
                .expect("g");
            let lease: Option<String> = redis::cmd("GET")
                .arg(format!("{key}:lease"))
                .query(&mut conn)
                .expect("l");
            eprintln!("{key} lease={lease:?} pending={pending:?} groups={groups:?}");
        }
    }
    crate::support::eventually(Duration::from_secs(30), async || {
        let dead: HashSet<(String, String)> = crate::support::dlq_entries(redis, "fulfillment")
            .into_iter()
            .filter_map(|d| Some((d.get("partition")?.clone(), d.get("source_id")?.clone())))
            .collect();
        if dead.len() >= expected_dead {
            Ok(())
        } else {
            Err(format!("{} of {expected_dead} dead letters", dead.len()))
        }
    })
    .await;
    eventually(Duration::from_secs(30), async || {
        match redis.pending("fulfillment") {
            0 => Ok(()),
            n => Err(format!("{n} entries still pending")),
        }
    })
    .await;
    // Per key, the first successes are the events that should succeed, in publish order.
    let log = subscriber.received();
    let mut first: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut seen = HashSet::new();
    for r in log.iter().filter(|r| r.status == 200) {
        if seen.insert(r.event_id.clone()) {
            first
                .entry(r.key.as_str())
                .or_default()
                .push(r.seq.expect("seq"));
        }
    }
    for (key, seqs) in published {
        let expected: Vec<u64> = seqs.iter().copied().filter(|s| !should_fail(*s)).collect();
        assert_eq!(
            first.get(key.as_str()).cloned().unwrap_or_default(),
            expected,
            "key {key}"
        );
    }
}

/// Holds leases before the pause; loses them to the other during it (its lease TTL
/// passes); comes back and gets its share again. Its late dead letters are refused by the
/// fence, and nothing is lost or left pending.
async fn pause_and_resume(extra: &str, sequenced: bool) {
    let redis = RedisServer::start();
    let subscriber = Subscriber::start(every_fifth_fails(), Some(Duration::from_millis(2))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = failing_config(&dir, &subscriber, extra);
    let a = RouterProcess::start(&redis, Some(&config)).await;
    let b = RouterProcess::start(&redis, Some(&config)).await;
    let mut published = HashMap::new();
    let publish = async |router: &RouterProcess,
                         rounds: std::ops::Range<u64>,
                         published: &mut HashMap<String, Vec<u64>>| {
        for seq in rounds {
            let batch: Vec<Value> = (0..30)
                .map(|k| {
                    let key = format!("ord_{k}");
                    published.entry(key.clone()).or_default().push(seq);
                    let mut event = keyed_event(seq * 1000 + k as u64, &key, seq);
                    if sequenced {
                        event["metadata"]["sequence"] = serde_json::json!(seq + 1);
                    }
                    event
                })
                .collect();
            router
                .publish_ok("order.created", &Value::Array(batch))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    publish(&a, 0..15, &mut published).await;
    wait_for_holders(
        &redis,
        2,
        "both instances should hold leases before the pause",
    )
    .await;
    b.signal("STOP");
    publish(&a, 15..30, &mut published).await;
    wait_for_holders(
        &redis,
        1,
        "the running instance should take every lease during the pause",
    )
    .await;
    publish(&a, 30..40, &mut published).await;
    b.signal("CONT");
    publish(&a, 40..60, &mut published).await;
    wait_for_holders(&redis, 2, "the resumed instance should get its share again").await;
    publish(&a, 60..70, &mut published).await;
    assert_settled(&redis, &subscriber, &published).await;
    drop(b);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_loses_its_partitions_and_nothing_is_lost() {
    let _heavy = crate::support::heavy().await;
    pause_and_resume("", false).await;
}

/// Under `ordering = "sequence"` the paused owner's late sequence state is refused by the
/// fence (it would move a key's number back, or past an event not yet delivered), so
/// when the partitions come back to it nothing is skipped or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sequence_owner_resumed_after_the_new_owner_advanced_loses_nothing() {
    let _heavy = crate::support::heavy().await;
    pause_and_resume(
        "ordering = \"sequence\"\nreorder = { timeout_ms = 60000, on_timeout = \"dead_letter\" }",
        true,
    )
    .await;
}
