//! Failed deliveries against a real Redis and real HTTP subscribers: retries keep per-key
//! order, Dapr's answer words (RETRY, DROP) follow Dapr's rules, 404 is retried unless the
//! subscription says `on_404 = "drop"`, and an endpoint that is down leaves its events to
//! the subscription's other endpoint.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::subscriber::{assert_in_key_order, successes, Received, Subscriber};
use support::{
    dlq_entries, eventually, fast_retries, order_event, publish_keyed, test_config, RedisServer,
    RouterApi, TestRouter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_attempt_is_retried_and_order_is_kept() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::with_rule(Arc::new(|r: &Received| {
        if r.attempt == 1 {
            (500, String::new())
        } else {
            (200, String::new())
        }
    }))
    .await;
    // Half the requests fail: with the default breaker this partial failure never ejects
    // the subscription's only endpoint (a breaker that opened after 5 failures in a row
    // would slow this down to one probe per cooldown).
    router
        .subscribe(
            "billing",
            &["order.>"],
            &subscriber.url(),
            json!({"backoff": fast_retries()}),
        )
        .await;
    let total = publish_keyed(&router, "order.paid", 20, 25).await;
    subscriber
        .wait_until(Duration::from_secs(60), "every event to succeed", |log| {
            successes(log, 1).len() >= total
        })
        .await;
    let delivered = successes(&subscriber.received(), 1);
    assert_in_key_order(&delivered, 20, 25);
    // Each key waits for its own retry: no event of a key is tried before the one ahead
    // of it has succeeded.
    let mut last: HashMap<String, u64> = HashMap::new();
    for r in subscriber.received() {
        let seq = r.seq.expect("seq");
        if let Some(prev) = last.get(&r.key) {
            assert!(seq >= *prev, "key {} went back from {prev} to {seq}", r.key);
            assert!(
                seq <= prev + 1,
                "key {} skipped ahead from {prev} to {seq}",
                r.key
            );
        }
        last.insert(r.key.clone(), seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_drop_and_404_follow_daprs_rules() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    // seq 0: RETRY once then SUCCESS; seq 1: DROP; seq 2: 404 once, then 200; seq 3: 200.
    let rule: support::subscriber::Rule = Arc::new(|r: &Received| match (r.seq, r.attempt) {
        (Some(0), 1) => (200, r#"{"status":"RETRY"}"#.into()),
        (Some(0), _) => (200, r#"{"status":"SUCCESS"}"#.into()),
        (Some(1), _) => (200, r#"{"status":"DROP"}"#.into()),
        (Some(2), 1) => (404, String::new()),
        _ => (200, String::new()),
    });
    // A plain webhook retries a 404 by default (an endpoint missing during a rollout);
    // `on_404 = "drop"` drops it as Dapr does.
    let subscriber = Subscriber::with_rule(rule.clone()).await;
    let dropping = Subscriber::with_rule(rule).await;
    router
        .subscribe(
            "rules",
            &["order.created"],
            &subscriber.url(),
            json!({"backoff": fast_retries()}),
        )
        .await;
    router
        .subscribe(
            "rules-drop",
            &["order.created"],
            &dropping.url(),
            json!({"backoff": fast_retries(), "on_404": "drop"}),
        )
        .await;
    publish_keyed(&router, "order.created", 1, 4).await;
    for s in [&subscriber, &dropping] {
        s.wait_until(Duration::from_secs(30), "seq 3", |log| {
            log.iter().any(|r| r.seq == Some(3))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = subscriber.received();
    let attempts = |log: &[Received], seq: u64| log.iter().filter(|r| r.seq == Some(seq)).count();
    assert_eq!(attempts(&log, 0), 2, "RETRY is retried once, then SUCCESS");
    assert_eq!(attempts(&log, 1), 1, "DROP is not retried");
    assert_eq!(attempts(&log, 2), 2, "404 is retried by default");
    assert_eq!(attempts(&log, 3), 1);
    let dropped_log = dropping.received();
    assert_eq!(attempts(&dropped_log, 2), 1, "on_404 = drop: not retried");
    // The counters move once evrouter has the answers: wait for them, then check them all.
    let expected = [
        ("rules", "delivered", 3),
        ("rules", "dropped", 1),
        ("rules", "retried", 2),
        ("rules-drop", "delivered", 2),
        ("rules-drop", "dropped", 2),
    ];
    eventually(Duration::from_secs(30), async || {
        let stats = router.stats().await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(sub, counter, n)| stats["subscriptions"][sub][counter] != *n)
            .map(|(sub, counter, n)| {
                format!(
                    "{sub}.{counter} = {} (want {n})",
                    stats["subscriptions"][sub][counter]
                )
            })
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join(", "))
        }
    })
    .await;
    assert!(dlq_entries(&redis, "rules").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_endpoint_down_everything_reaches_the_other() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let up = Subscriber::ok().await;
    let down = Subscriber::ok().await;
    let down_url = down.url();
    down.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Two endpoints, the one that is down first.
    router
        .subscribe(
            "two",
            &["order.created"],
            &down_url,
            json!({"endpoints": [down_url, up.url()], "backoff": fast_retries(),
                   "max_attempts": 20}),
        )
        .await;
    let total = publish_keyed(&router, "order.created", 10, 20).await;
    up.wait_until(Duration::from_secs(60), "every event to succeed", |log| {
        successes(log, 0).len() >= total
    })
    .await;
    assert_in_key_order(&successes(&up.received(), 0), 10, 20);
    assert!(dlq_entries(&redis, "two").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_is_bounded_in_bytes_too() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    // A slow subscriber; events of about 10 KB; a 64 KiB budget holds about 6 of them.
    let subscriber = Subscriber::start(
        Arc::new(|_: &Received| (200, String::new())),
        Some(Duration::from_millis(100)),
    )
    .await;
    router
        .subscribe(
            "bounded",
            &["order.created"],
            &subscriber.url(),
            json!({"ordering": "none", "max_in_flight_bytes": 65536}),
        )
        .await;
    let filler = "y".repeat(10 * 1024);
    let events: Vec<serde_json::Value> = (0..60)
        .map(|i| {
            let mut event = order_event(i, &format!("ord_{i}"));
            event["data"]["notes"] = json!(filler);
            event
        })
        .collect();
    router
        .publish_ok("order.created", &serde_json::Value::Array(events))
        .await;
    let mut most = 0;
    while subscriber.count() < 60 {
        let stats = router.stats().await;
        most = most.max(
            stats["subscriptions"]["bounded"]["in_flight"]
                .as_u64()
                .unwrap_or(0),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= 7,
        "{most} events of 10 KB in flight with a 64 KiB budget"
    );
    // Seen from the subscriber too (arrival and answer of each request on its own clock):
    // never more events in open requests at once than the budget holds.
    let log = subscriber.received();
    let open_at = |r: &Received| {
        log.iter()
            .filter(|o| o.arrived <= r.arrived && o.answered > r.arrived)
            .count()
    };
    let widest = log.iter().map(open_at).max().unwrap_or(0);
    assert!(
        (1..=7).contains(&widest),
        "{widest} events of 10 KB at the subscriber at once with a 64 KiB budget"
    );
}
