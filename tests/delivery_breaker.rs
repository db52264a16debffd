//! The circuit breaker of a subscription's only endpoint against a real Redis and real HTTP
//! subscribers: a half-failing endpoint is slowed down, never starved (the burst of failed
//! first attempts at start, and a recovery from an outage into partial health), and a dead
//! one costs a small probe rate while its events wait instead of using up their attempts.

mod support;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{json, Value};
use support::subscriber::{assert_in_key_order, Received, Rule, Subscriber};
use support::{
    client, dlq_entries, eventually, keyed_event, test_config, RedisServer, RouterApi, TestRouter,
};

const KEYS: usize = 40;
const PER_KEY: u64 = 50;

/// The retries of the scenario: 10 ms, doubling, at most 200 ms.
fn backoff() -> Value {
    json!({"initial_ms": 10, "max_ms": 200, "multiplier": 2.0, "jitter": 0.2})
}

/// A rule that answers 500 the first time it sees an event id and 200 afterwards; while
/// `down` is set, 503 to everything.
fn fails_every_first_attempt(down: Arc<AtomicBool>) -> Rule {
    let seen = Mutex::new(HashSet::new());
    Arc::new(move |r: &Received| {
        let first = seen.lock().expect("seen").insert(r.event_id.clone());
        if down.load(Ordering::Relaxed) {
            (503, String::new())
        } else if first {
            (500, String::new())
        } else {
            (200, String::new())
        }
    })
}

/// Publishes `PER_KEY` events for each of `KEYS` keys of round `round` (`r{round}_ord_0` …),
/// seq counting up per key, with event ids of that round only.
async fn publish_round(router: &TestRouter, topic: &str, round: u64) -> usize {
    let mut batch = Vec::new();
    let mut n = 0;
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            batch.push(keyed_event(
                round * 1_000_000 + n,
                &format!("r{round}_ord_{k}"),
                seq,
            ));
            n += 1;
            if batch.len() == 500 {
                router
                    .publish_ok(topic, &Value::Array(std::mem::take(&mut batch)))
                    .await;
            }
        }
    }
    if !batch.is_empty() {
        router.publish_ok(topic, &Value::Array(batch)).await;
    }
    n as usize
}

/// The events answered 200, once each, in the order they were answered.
fn delivered(log: &[Received]) -> Vec<Received> {
    let mut seen = HashSet::new();
    log.iter()
        .filter(|r| r.status == 200 && seen.insert(r.event_id.clone()))
        .cloned()
        .collect()
}

/// Waits (at most 60 s) for every event to be answered 200, then checks each key's order.
async fn all_arrive_in_key_order(subscriber: &Subscriber, total: usize, what: &str) {
    subscriber
        .wait_until(Duration::from_secs(60), what, |log| {
            delivered(log).len() >= total
        })
        .await;
    assert_in_key_order(&delivered(&subscriber.received()), KEYS, PER_KEY);
}

/// One round of the startup burst: a fresh subscription and subscriber, 2,000 events over
/// 40 keys; every first attempt fails at once, before any retry answers.
async fn startup_burst(router: &TestRouter, round: u64) {
    let subscriber =
        Subscriber::with_rule(fails_every_first_attempt(Arc::new(AtomicBool::new(false)))).await;
    let topic = format!("order.burst{round}");
    router
        .subscribe(
            &format!("burst-{round}"),
            &[&topic],
            &subscriber.url(),
            json!({"max_attempts": 3, "backoff": backoff()}),
        )
        .await;
    let total = publish_round(router, &topic, round).await;
    all_arrive_in_key_order(&subscriber, total, &format!("round {round}: every event")).await;
}

/// A subscriber that fails the first attempt of every event gets all of them, in order per
/// key, every time: five rounds, each with its own subscription, keys and subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_failing_every_first_attempt_gets_everything_every_time() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let mut starved = Vec::new();
    for round in 1..=5 {
        // A round that waits in vain panics; the others still run, and all are reported.
        let run = AssertUnwindSafe(startup_burst(&router, round)).catch_unwind();
        if run.await.is_err() {
            starved.push(round);
        }
    }
    assert!(starved.is_empty(), "rounds {starved:?} of 5 starved");
    for round in 1..=5 {
        assert!(dlq_entries(&redis, &format!("burst-{round}")).is_empty());
    }
}

/// The Prometheus sample of `series`.
async fn metric(router: &TestRouter, series: &str) -> Option<f64> {
    let text = client()
        .get(router.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An endpoint that fails everything until its breaker is open, then recovers into partial
/// health (every first attempt fails): every event arrives, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_recovering_into_partial_health_gets_everything() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    for round in 1..=3 {
        let down = Arc::new(AtomicBool::new(true));
        let subscriber = Subscriber::with_rule(fails_every_first_attempt(down.clone())).await;
        let topic = format!("order.recovery{round}");
        let name = format!("recovery-{round}");
        router
            .subscribe(
                &name,
                &[&topic],
                &subscriber.url(),
                json!({"max_attempts": 5, "backoff": backoff()}),
            )
            .await;
        let total = publish_round(&router, &topic, round).await;
        let series = format!(
            "evrouter_breaker_open{{subscription=\"{name}\",endpoint=\"{}\"}}",
            subscriber.url()
        );
        eventually(Duration::from_secs(30), async || {
            match metric(&router, &series).await {
                Some(1.0) => Ok(()),
                other => Err(format!("breaker open: {other:?}")),
            }
        })
        .await;
        // The outage goes on a while with the breaker open, then ends.
        tokio::time::sleep(Duration::from_secs(3)).await;
        down.store(false, Ordering::Relaxed);
        all_arrive_in_key_order(
            &subscriber,
            total,
            &format!("round {round}: every event after the outage"),
        )
        .await;
        assert!(dlq_entries(&redis, &name).is_empty());
    }
}

/// An endpoint that fails every request is held to a small probe rate, and its events wait
/// for it rather than use up their attempts: every dead letter was really sent as often as
/// it says it was tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_costs_a_probe_rate_and_its_events_wait() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::with_rule(Arc::new(|_| (503, String::new()))).await;
    router
        .subscribe(
            "down",
            &["order.>"],
            &subscriber.url(),
            json!({"max_attempts": 2, "backoff": backoff()}),
        )
        .await;
    let total = support::publish_keyed(&router, "order.created", 20, 5).await;
    // The first attempts of the 20 keys' first events go out before the breaker weighs
    // them; afterwards, a few requests a second.
    subscriber.wait_for(20, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = subscriber.count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = subscriber.count() - before;
    assert!(
        during <= 5 * 4,
        "{during} requests in 5 s to an endpoint that fails everything"
    );
    assert!(during >= 1, "a dead endpoint is still probed");
    // No event was dead-lettered for attempts it did not make (its requests are logged
    // before their answers reach evrouter: the log is read after the DLQ).
    let page = router.get_json("/v1/dlq/down?limit=1000").await;
    let dead = page["entries"].as_array().expect("entries").clone();
    let sent: HashMap<String, usize> =
        subscriber
            .received()
            .iter()
            .fold(HashMap::new(), |mut sent, r| {
                *sent.entry(r.event_id.clone()).or_default() += 1;
                sent
            });
    assert!(dead.len() < total, "{} of {total} dead", dead.len());
    for entry in &dead {
        let id = entry["event"]["event_id"].as_str().unwrap_or_default();
        let attempts = entry["attempts"].as_u64().expect("attempts") as usize;
        assert_eq!(
            sent.get(id).copied().unwrap_or(0),
            attempts,
            "event {id}: dead-lettered after {attempts} attempts"
        );
    }
}
