//! `ordering = "sequence"` against a real Redis and a real HTTP subscriber: shuffled
//! sequences arrive in order, gaps time out to the DLQ or are skipped, duplicates and
//! stragglers are not delivered.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::process::RouterProcess;
use support::subscriber::{seqs_by_key, Subscriber};
use support::{
    dlq_entries, eventually, keyed_event, test_config, RedisServer, RouterApi, TestRouter,
};

/// An order event of `key` numbered `seq` (in `metadata.sequence`, and in `data.seq` for
/// the subscriber to read back).
fn sequenced(n: u64, key: &str, seq: u64) -> Value {
    let mut event = keyed_event(n, key, seq);
    event["metadata"]["sequence"] = json!(seq);
    event
}

/// Publishes `events` to `order.created` in batches of up to 250.
async fn publish_all(router: &impl RouterApi, events: Vec<Value>) {
    for chunk in events.chunks(250) {
        router
            .publish_ok("order.created", &Value::Array(chunk.to_vec()))
            .await;
    }
}

/// The sequence counters of subscription `name`.
async fn sequence_stats(router: &impl RouterApi, name: &str) -> Value {
    router.stats().await["subscriptions"][name]["sequence"].clone()
}

/// A router with the subscription `ledger` to `order.created` under sequence ordering,
/// with `extra` fields (`reorder`, `max_in_flight` …) added to its spec.
async fn ledger(extra: Value) -> (RedisServer, TestRouter, Subscriber) {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    let mut extra = extra;
    extra["ordering"] = json!("sequence");
    router
        .subscribe("ledger", &["order.created"], &subscriber.url(), extra)
        .await;
    (redis, router, subscriber)
}

/// A small deterministic shuffle (xorshift), so a failure can be replayed.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        items.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_sequences_arrive_in_strict_order() {
    let (_redis, router, subscriber) = ledger(json!({"max_in_flight": 20000,
               "reorder": {"start": 1, "timeout_ms": 60000}}))
    .await;
    // 1..=200 for each of 50 keys, each key's numbers shuffled within windows of 50, the
    // keys interleaved.
    let (keys, per_key) = (50usize, 200u64);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut per_key_order: Vec<Vec<u64>> = (0..keys)
        .map(|_| {
            let mut seqs: Vec<u64> = (1..=per_key).collect();
            for window in seqs.chunks_mut(50) {
                shuffle(window, &mut seed);
            }
            seqs
        })
        .collect();
    let mut events = Vec::new();
    let mut n = 0;
    for i in 0..per_key as usize {
        for (k, seqs) in per_key_order.iter_mut().enumerate() {
            events.push(sequenced(n, &format!("ord_{k}"), seqs[i]));
            n += 1;
        }
    }
    let total = events.len();
    publish_all(&router, events).await;
    subscriber.wait_for(total, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = subscriber.received();
    assert_eq!(log.len(), total, "lost or duplicated");
    let by_key = seqs_by_key(&log);
    assert_eq!(by_key.len(), keys);
    for (key, seqs) in by_key {
        assert_eq!(
            seqs,
            (1..=per_key).collect::<Vec<_>>(),
            "{key} out of sequence"
        );
    }
    let stats = sequence_stats(&router, "ledger").await;
    assert!(stats["gaps_opened"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert_eq!(stats["gaps_opened"], stats["gaps_filled"], "{stats}");
    assert_eq!(stats["held"], 0, "{stats}");
    assert_eq!(stats["gaps_timed_out"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_that_stays_open_goes_to_the_dlq_after_its_timeout() {
    let (redis, router, subscriber) =
        ledger(json!({"reorder": {"timeout_ms": 2000, "on_timeout": "dead_letter"}})).await;
    publish_all(
        &router,
        vec![sequenced(0, "ord_a", 1), sequenced(1, "ord_a", 2)],
    )
    .await;
    subscriber.wait_for(2, Duration::from_secs(10)).await;
    let published = Instant::now();
    publish_all(
        &router,
        vec![sequenced(2, "ord_a", 4), sequenced(3, "ord_a", 5)],
    )
    .await;
    let mut dead = Vec::new();
    while published.elapsed() < Duration::from_secs(30) {
        dead = dlq_entries(&redis, "ledger");
        if dead.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = published.elapsed();
    assert_eq!(dead.len(), 2, "the held events are dead-lettered");
    // The gap's timer starts when evrouter reads the event, after the publish: the held
    // events are never dead-lettered before their timeout (how much later depends on the
    // machine, and is not asserted).
    assert!(
        took >= Duration::from_millis(2000),
        "dead-lettered before the 2 s timeout: {took:?}"
    );
    for fields in &dead {
        assert_eq!(fields["reason"], "sequence_gap_timeout");
        assert_eq!(fields["last_error"], "missing sequence numbers 3");
    }
    // The straggler is reported (its gap was closed), not delivered; the next one is.
    publish_all(
        &router,
        vec![sequenced(4, "ord_a", 3), sequenced(5, "ord_a", 6)],
    )
    .await;
    subscriber.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs = seqs_by_key(&subscriber.received());
    assert_eq!(seqs["ord_a"], vec![1, 2, 6]);
    let stats = sequence_stats(&router, "ledger").await;
    assert_eq!(stats["gaps_timed_out"], 1, "{stats}");
    assert_eq!(stats["late_after_gap"], 1, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(stats["held"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_skips_the_gap_and_reports_stragglers_and_duplicates() {
    let (redis, router, subscriber) =
        ledger(json!({"reorder": {"timeout_ms": 500, "on_timeout": "release", "start": 1}})).await;
    // 2 is missing; 1 comes twice; one event has no sequence at all.
    let mut unsequenced = keyed_event(9, "ord_b", 100);
    unsequenced["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("sequence");
    publish_all(
        &router,
        vec![
            sequenced(0, "ord_b", 1),
            sequenced(1, "ord_b", 4),
            sequenced(2, "ord_b", 3),
            sequenced(3, "ord_b", 1),
            unsequenced,
        ],
    )
    .await;
    subscriber.wait_for(4, Duration::from_secs(30)).await;
    // 2 arrives after its gap was skipped: recorded in the DLQ, not delivered.
    publish_all(
        &router,
        vec![sequenced(4, "ord_b", 2), sequenced(5, "ord_b", 5)],
    )
    .await;
    subscriber.wait_for(5, Duration::from_secs(30)).await;
    let dead = eventually(Duration::from_secs(30), async || {
        let dead = dlq_entries(&redis, "ledger");
        if dead.is_empty() {
            Err("no dead letter".to_string())
        } else {
            Ok(dead)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs = seqs_by_key(&subscriber.received());
    let sequenced_only: Vec<u64> = seqs["ord_b"]
        .iter()
        .copied()
        .filter(|s| *s != 100)
        .collect();
    assert_eq!(sequenced_only, vec![1, 3, 4, 5]);
    assert!(
        seqs["ord_b"].contains(&100),
        "the unsequenced event is delivered"
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "late_after_gap");
    let stats = sequence_stats(&router, "ledger").await;
    assert_eq!(stats["skipped"], 1, "{stats}");
    assert_eq!(stats["late_after_gap"], 1, "{stats}");
    assert_eq!(stats["duplicates"], 1, "{stats}");
    assert_eq!(stats["unsequenced"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reorder_spec_is_refused_with_its_path() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let (status, body) = router
        .create_subscription(
            &json!({"name": "x", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/"],
                      "ordering": "sequence", "reorder": {"timeout_ms": 0, "on_timeout": "later"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.is_object(), "{body}");
    assert!(body.to_string().contains("/reorder"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_survive_kill_9_and_the_count_goes_on() {
    let redis = RedisServer::start();
    let subscriber = Subscriber::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nlease_ttl = \"1s\"\n\n[[subscriptions]]\nname = \"ledger\"\ntopics = [\"order.>\"]\nendpoints = [\"{}\"]\nordering = \"sequence\"\nreorder = {{ timeout_ms = 60000 }}\n",
            subscriber.url()
        ),
    )
    .expect("config");
    let first = RouterProcess::start(&redis, Some(&config)).await;
    publish_all(
        &first,
        vec![sequenced(0, "ord_k", 1), sequenced(1, "ord_k", 2)],
    )
    .await;
    subscriber.wait_for(2, Duration::from_secs(30)).await;
    publish_all(
        &first,
        vec![sequenced(2, "ord_k", 4), sequenced(3, "ord_k", 5)],
    )
    .await;
    eventually(Duration::from_secs(30), async || {
        let held = sequence_stats(&first, "ledger").await["held"].clone();
        if held == 2 {
            Ok(())
        } else {
            Err(format!("4 and 5 wait for 3: held {held}"))
        }
    })
    .await;
    // The acks of 1 and 2 (and their recorded next number) are written: only 4 and 5
    // stay pending.
    eventually(Duration::from_secs(30), async || {
        match redis.pending("ledger") {
            2 => Ok(()),
            n => Err(format!("{n} pending, want 2")),
        }
    })
    .await;
    first.signal("KILL");
    drop(first);

    // A new instance takes the partitions over once the dead one's leases expire: it reads
    // 4 and 5 again from the pending entries and, knowing 3 comes next, holds them.
    let second = RouterProcess::start(&redis, Some(&config)).await;
    eventually(Duration::from_secs(30), async || {
        let held = sequence_stats(&second, "ledger").await["held"].clone();
        if held == 2 {
            Ok(())
        } else {
            Err(format!("the new owner should hold 4 and 5: held {held}"))
        }
    })
    .await;
    assert_eq!(subscriber.count(), 2, "4 and 5 are still held");
    publish_all(&second, vec![sequenced(4, "ord_k", 3)]).await;
    subscriber.wait_for(5, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs = seqs_by_key(&subscriber.received());
    assert_eq!(seqs["ord_k"], vec![1, 2, 3, 4, 5]);
    assert!(dlq_entries(&redis, "ledger").is_empty());
}
