//! Delivery against a real Redis and real HTTP subscribers: completeness, per-key order,
//! retries, dead letters, Dapr's answer rules, fan-out, patterns and failover of endpoints.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::subscriber::{successes, Received, Subscriber};
use support::{
    client, dlq_entries, get_json, keyed_event, status_of, subscribe, test_config, RedisServer,
    TestRouter,
};

/// Publishes `per_key` events for each of `keys` keys in batches, `data.seq` counting up
/// per key; returns how many were published.
async fn publish_keyed(router: &TestRouter, topic: &str, keys: usize, per_key: u64) -> usize {
    let mut n = 0u64;
    let mut batch = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            batch.push(keyed_event(n, &format!("ord_{k}"), seq));
            n += 1;
            if batch.len() == 500 {
                let (status, body) = router
                    .publish(topic, &Value::Array(std::mem::take(&mut batch)))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        }
    }
    if !batch.is_empty() {
        let (status, body) = router.publish(topic, &Value::Array(batch)).await;
        assert_eq!(status, 200, "{body}");
    }
    n as usize
}

/// Asserts every key's events arrived with `seq` 0, 1, 2 … with no gap or reordering.
fn assert_in_key_order(delivered: &[Received], keys: usize, per_key: u64) {
    let mut by_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in delivered {
        by_key
            .entry(r.key.as_str())
            .or_default()
            .push(r.seq.expect("seq"));
    }
    assert_eq!(by_key.len(), keys, "keys missing");
    for (key, seqs) in by_key {
        let expected: Vec<u64> = (0..per_key).collect();
        assert_eq!(seqs, expected, "key {key} out of order or incomplete");
    }
}

fn fast_retries() -> Value {
    json!({"initial_ms": 10, "max_ms": 50, "multiplier": 2.0, "jitter": 0.2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_100_keys_arrive_complete_and_in_key_order() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    subscribe(
        &router,
        json!({"name": "shipping", "topics": ["order.*"], "endpoints": [subscriber.url()]}),
    )
    .await;
    let total = publish_keyed(&router, "order.created", 100, 100).await;
    subscriber.wait_for(total, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = subscriber.received();
    assert_eq!(log.len(), total, "duplicates delivered");
    assert_in_key_order(&log, 100, 100);
    assert!(log
        .iter()
        .all(|r| r.attempt == 1 && r.topic.as_deref() == Some("order.created")));
    assert!(log.iter().all(|r| r
        .traceparent
        .as_deref()
        .is_some_and(evrouter::trace::is_valid_traceparent)));
    // Everything is acked: nothing pending for the group.
    let stats: Value = get_json(router.url("/v1/stats")).await;
    let shipping = &stats["subscriptions"]["shipping"];
    assert_eq!(shipping["delivered"], total as u64);
    assert_eq!(shipping["lag"], 0);
    assert!(shipping["latency_ms"]["p95"].as_f64().is_some());
    router.stop().await.expect("clean stop");
    let mut conn = redis.conn();
    let mut pending = 0;
    for p in 0..16 {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(format!("evr:{{order.{p}}}"))
            .arg("shipping")
            .query(&mut conn)
            .expect("xpending");
        if let redis::Value::Array(parts) = summary {
            if let Some(redis::Value::Int(n)) = parts.first() {
                pending += n;
            }
        }
    }
    assert_eq!(pending, 0, "entries left unacked");
}

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
    // Half the requests fail: a breaker that opens after 5 failures in a row would
    // slow this down to one probe per cooldown.
    subscribe(
        &router,
        json!({"name": "billing", "topics": ["order.>"], "endpoints": [subscriber.url()],
        "backoff": fast_retries(), "breaker": {"failures": 1000, "cooldown_ms": 100}}),
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
async fn an_always_failing_subscriber_gets_everything_into_the_dlq() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    // 400: retried, but the endpoint stays healthy (a 5xx would open its breaker and
    // slow the retries down to one probe per cooldown). Recovers when told to.
    let recovered = Arc::new(AtomicBool::new(false));
    let flag = recovered.clone();
    let subscriber = Subscriber::with_rule(Arc::new(move |_| {
        if flag.load(AtomicOrdering::Relaxed) {
            (200, String::new())
        } else {
            (400, String::new())
        }
    }))
    .await;
    subscribe(
        &router,
        json!({"name": "audit", "topics": ["order.created"], "endpoints": [subscriber.url()],
        "max_attempts": 3, "backoff": fast_retries()}),
    )
    .await;
    let total = publish_keyed(&router, "order.created", 5, 4).await;
    subscriber
        .wait_for(total * 3, Duration::from_secs(60))
        .await;
    // Wait for the dead letters to be written.
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = dlq_entries(&redis, "audit");
        if dead.len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), total);
    for fields in &dead {
        assert_eq!(fields["reason"], "max_attempts_exceeded");
        assert_eq!(fields["attempts"], "3");
        assert_eq!(fields["last_status"], "400");
        assert!(fields.contains_key("first_attempt_ms") && fields.contains_key("last_attempt_ms"));
    }
    assert!(
        subscriber.received().iter().all(|r| r.attempt <= 3),
        "attempted beyond max_attempts"
    );
    let stats: Value = get_json(router.url("/v1/stats")).await;
    assert_eq!(
        stats["subscriptions"]["audit"]["dead_lettered"],
        total as u64
    );

    // The API lists them in pages with their failure info.
    let http = client();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = router.url("/v1/dlq/audit?limit=7");
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let page: Value = http
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let entries = page["entries"].as_array().expect("entries").clone();
        assert!(entries.len() <= 7);
        listed.extend(entries);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(listed.len(), total);
    assert!(listed.iter().all(|e| e["reason"] == "max_attempts_exceeded"
        && e["attempts"] == 3
        && e["event"]["data"]["order_id"].is_string()));
    let unknown = http
        .get(router.url("/v1/dlq/nobody"))
        .send()
        .await
        .expect("list");
    assert_eq!(unknown.status(), 404);

    // The subscriber recovers; one chosen entry is replayed, then the rest.
    recovered.store(true, AtomicOrdering::Relaxed);
    let before = subscriber.count();
    let first = listed[0]["id"].as_str().expect("id").to_string();
    let report: Value = http
        .post(router.url("/v1/dlq/audit/replay"))
        .json(&json!({"ids": [first]}))
        .send()
        .await
        .expect("replay")
        .json()
        .await
        .expect("json");
    assert_eq!(report["replayed"], 1);
    assert_eq!(subscriber.count(), before + 1);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .args([
            "dlq",
            "replay",
            "--subscription",
            "audit",
            "--router",
            &router.base,
        ])
        .output()
        .expect("cli");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["replayed"], total as u64 - 1);
    assert_eq!(subscriber.count(), before + total);
    assert!(dlq_entries(&redis, "audit").is_empty());

    // Purge: fail again, dead-letter, purge.
    recovered.store(false, AtomicOrdering::Relaxed);
    let mut extra = keyed_event(5000, "ord_x", 0);
    extra["event_id"] = json!("evt_order_5000");
    assert_eq!(router.publish("order.created", &extra).await.0, 200);
    for _ in 0..200 {
        if dlq_entries(&redis, "audit").len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let purged: Value = http
        .delete(router.url("/v1/dlq/audit"))
        .send()
        .await
        .expect("purge")
        .json()
        .await
        .expect("json");
    assert_eq!(purged["purged"], 1);
    assert!(dlq_entries(&redis, "audit").is_empty());
}

/// Every DLQ entry of a subscription (over all partitions), as field maps.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_drop_and_404_follow_daprs_rules() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    // seq 0: RETRY once then SUCCESS; seq 1: DROP; seq 2: 404; seq 3: plain 200.
    let subscriber = Subscriber::with_rule(Arc::new(|r: &Received| match (r.seq, r.attempt) {
        (Some(0), 1) => (200, r#"{"status":"RETRY"}"#.into()),
        (Some(0), _) => (200, r#"{"status":"SUCCESS"}"#.into()),
        (Some(1), _) => (200, r#"{"status":"DROP"}"#.into()),
        (Some(2), _) => (404, String::new()),
        _ => (200, String::new()),
    }))
    .await;
    subscribe(&router, json!({"name": "rules", "topics": ["order.created"], "endpoints": [subscriber.url()], "backoff": fast_retries()})).await;
    publish_keyed(&router, "order.created", 1, 4).await;
    subscriber
        .wait_until(Duration::from_secs(30), "seq 3", |log| {
            log.iter().any(|r| r.seq == Some(3))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = subscriber.received();
    let attempts = |seq: u64| log.iter().filter(|r| r.seq == Some(seq)).count();
    assert_eq!(attempts(0), 2, "RETRY is retried once, then SUCCESS");
    assert_eq!(attempts(1), 1, "DROP is not retried");
    assert_eq!(attempts(2), 1, "404 is not retried");
    assert_eq!(attempts(3), 1);
    let stats: Value = get_json(router.url("/v1/stats")).await;
    let rules = &stats["subscriptions"]["rules"];
    assert_eq!(rules["delivered"], 2);
    assert_eq!(rules["dropped"], 2);
    assert_eq!(rules["retried"], 1);
    assert!(dlq_entries(&redis, "rules").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_each_get_everything_and_patterns_select_topics() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let all_orders = Subscriber::ok().await;
    let also_orders = Subscriber::ok().await;
    let payments = Subscriber::ok().await;
    subscribe(
        &router,
        json!({"name": "a", "topics": ["order.>"], "endpoints": [all_orders.url()]}),
    )
    .await;
    subscribe(
        &router,
        json!({"name": "b", "topics": ["*.created"], "endpoints": [also_orders.url()]}),
    )
    .await;
    subscribe(&router, json!({"name": "c", "topics": [r"re:^payment\.(captured|refunded)$"], "endpoints": [payments.url()]})).await;
    let created = publish_keyed(&router, "order.created", 10, 10).await;
    for topic in ["payment.captured", "payment.failed", "payment.refunded"] {
        let mut event = keyed_event(1, "ord_p", 0);
        event["event_id"] = json!(format!("evt_payment_{}", topic.len()));
        assert_eq!(router.publish(topic, &event).await.0, 200);
    }
    all_orders.wait_for(created, Duration::from_secs(30)).await;
    also_orders.wait_for(created, Duration::from_secs(30)).await;
    payments.wait_for(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all_orders.count(), created);
    assert_eq!(also_orders.count(), created);
    let topics: Vec<Option<String>> = payments
        .received()
        .iter()
        .map(|r| r.topic.clone())
        .collect();
    assert_eq!(topics.len(), 2);
    assert!(!topics.contains(&Some("payment.failed".to_string())));
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
    subscribe(
        &router,
        json!({"name": "two", "topics": ["order.created"], "endpoints": [down_url, up.url()],
        "backoff": fast_retries(), "max_attempts": 20}),
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
async fn bulk_mode_sends_arrays_of_different_keys() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    subscribe(
        &router,
        json!({"name": "bulk", "topics": ["order.created"], "endpoints": [subscriber.url()],
        "mode": "bulk", "bulk": {"max_events": 50, "max_wait_ms": 20}}),
    )
    .await;
    let total = publish_keyed(&router, "order.created", 200, 10).await;
    subscriber.wait_for(total, Duration::from_secs(60)).await;
    let log = subscriber.received();
    assert_eq!(log.len(), total);
    assert!(
        log.iter().any(|r| r.batch > 1),
        "no request carried more than one event"
    );
    assert!(log.iter().all(|r| r.batch <= 50));
    assert_in_key_order(&log, 200, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_api_validates_and_detects_conflicts() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let http = client();
    let spec = json!({"name": "shipping", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/events"]});
    let post = |body: Value| {
        http.post(router.url("/v1/subscriptions"))
            .json(&body)
            .send()
    };
    assert_eq!(post(spec.clone()).await.expect("post").status(), 201);
    assert_eq!(
        post(spec.clone()).await.expect("post").status(),
        200,
        "same body again"
    );
    let mut different = spec.clone();
    different["topics"] = json!(["order.>"]);
    assert_eq!(post(different.clone()).await.expect("post").status(), 409);
    let put = http
        .put(router.url("/v1/subscriptions/shipping"))
        .json(&different)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let got: Value = http
        .get(router.url("/v1/subscriptions/shipping"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["topics"], json!(["order.>"]));
    assert_eq!(got["max_attempts"], 10, "defaults are filled in");
    let bad = json!({"name": "Bad Name", "topics": ["order..x"], "endpoints": ["ftp://x"], "max_attempts": 0, "mode": "sometimes"});
    let response = post(bad).await.expect("post");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_subscription");
    assert_eq!(body["error"]["details"][0]["path"], "/mode");
    let bad = json!({"name": "Bad Name", "topics": ["order..x"], "endpoints": ["ftp://x"], "max_attempts": 0});
    let body: Value = post(bad).await.expect("post").json().await.expect("json");
    let paths: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    for expected in ["/name", "/topics/0", "/endpoints/0", "/max_attempts"] {
        assert!(paths.contains(&expected), "{expected} not in {paths:?}");
    }
    let unknown =
        json!({"name": "x", "topics": ["a.b"], "endpoints": ["http://h/e"], "colour": "red"});
    let body: Value = post(unknown)
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert!(body["error"]["details"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("colour"));
    let list: Value = http
        .get(router.url("/v1/subscriptions"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(
        status_of(
            reqwest::Method::DELETE,
            router.url("/v1/subscriptions/shipping")
        )
        .await,
        204
    );
    assert_eq!(
        status_of(
            reqwest::Method::DELETE,
            router.url("/v1/subscriptions/shipping")
        )
        .await,
        404
    );
    assert_eq!(
        status_of(
            reqwest::Method::GET,
            router.url("/v1/subscriptions/shipping")
        )
        .await,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_skips_earlier_events_and_earliest_takes_them() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    publish_keyed(&router, "order.created", 5, 2).await;
    let latest = Subscriber::ok().await;
    let earliest = Subscriber::ok().await;
    subscribe(
        &router,
        json!({"name": "latest", "topics": ["order.created"], "endpoints": [latest.url()]}),
    )
    .await;
    subscribe(&router, json!({"name": "earliest", "topics": ["order.created"], "endpoints": [earliest.url()], "start": "earliest"})).await;
    let mut event = keyed_event(999, "ord_new", 0);
    event["event_id"] = json!("evt_order_999");
    assert_eq!(router.publish("order.created", &event).await.0, 200);
    earliest.wait_for(11, Duration::from_secs(30)).await;
    latest.wait_for(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(latest.count(), 1);
    assert_eq!(latest.received()[0].event_id, "evt_order_999");
    assert_eq!(earliest.count(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_by_itself_after_redis_loses_everything() {
    let mut redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.delivery.lease_ttl = "1s".into();
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    subscribe(
        &router,
        json!({"name": "resilient", "topics": ["order.created"], "endpoints": [subscriber.url()]}),
    )
    .await;
    let first = publish_keyed(&router, "order.created", 10, 10).await;
    subscriber.wait_for(first, Duration::from_secs(30)).await;
    // Redis restarts without persistence: streams, groups, leases and the subscription
    // registry are gone.
    redis.restart();
    let mut published = 0;
    for attempt in 0..100u64 {
        let mut event = keyed_event(10_000 + attempt, "ord_after", attempt);
        event["event_id"] = json!(format!("evt_order_{}", 10_000 + attempt));
        if router.publish("order.created", &event).await.0 == 200 {
            published += 1;
            if published == 20 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published, 20);
    subscriber
        .wait_until(Duration::from_secs(30), "20 events of ord_after", |log| {
            log.iter().filter(|r| r.key == "ord_after").count() >= 20
        })
        .await;
    let registry: Value = client()
        .get(router.url("/v1/subscriptions"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(registry.as_array().map(Vec::len), Some(1));
    let stored: i64 = redis::cmd("HLEN")
        .arg("evr:subscriptions")
        .query(&mut redis.conn())
        .expect("hlen");
    assert_eq!(stored, 1, "the subscription was stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_none_delivers_everything_in_parallel() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    // Slow answers: with one key, only parallel delivery finishes in reasonable time.
    let subscriber = Subscriber::start(
        Arc::new(|_| (200, String::new())),
        Some(Duration::from_millis(50)),
    )
    .await;
    subscribe(
        &router,
        json!({"name": "parallel", "topics": ["order.created"], "endpoints": [subscriber.url()],
               "ordering": "none", "max_in_flight": 200}),
    )
    .await;
    let total = publish_keyed(&router, "order.created", 1, 200).await;
    subscriber.wait_for(total, Duration::from_secs(20)).await;
    let log = subscriber.received();
    let unique: std::collections::HashSet<&str> = log.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(unique.len(), total);
    // One key, 200 events of 50 ms each: in order they would need 10 s; in parallel
    // they overlap, so some arrive out of publish order.
    let seqs: Vec<u64> = log.iter().filter_map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).any(|w| w[0] > w[1]),
        "events were not delivered in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_works_with_a_redis_password_and_database_number() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query::<()>(&mut conn)
        .expect("set a password");
    // Both the general client and the readers' own connection must log in and select
    // database 2.
    let mut config = test_config(&redis);
    config.redis.url = format!("redis://:s3cret@127.0.0.1:{}/2", redis.port);
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    subscribe(
        &router,
        json!({"name": "shipping", "topics": ["order.created"], "endpoints": [subscriber.url()]}),
    )
    .await;
    let total = publish_keyed(&router, "order.created", 3, 3).await;
    subscriber.wait_for(total, Duration::from_secs(20)).await;
    assert_eq!(subscriber.count(), total);
    let mut db2 = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/2", redis.port))
        .and_then(|c| c.get_connection())
        .expect("connect to db 2");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("evr:{order.*}")
        .query(&mut db2)
        .expect("keys");
    assert!(!keys.is_empty(), "the streams are in database 2");
}
