//! Delivery against a real Redis and real HTTP subscribers: completeness and per-key
//! order, fan-out to several subscriptions, topic patterns, bulk requests, where a new
//! subscription starts, unordered delivery, Redis losing its data or asking for a
//! password, and a reader behind on one partition.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::subscriber::{assert_in_key_order, Subscriber};
use support::{
    eventually, is_valid_traceparent, keyed_event, publish_keyed, test_config, RedisServer,
    RouterApi, TestRouter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_100_keys_arrive_complete_and_in_key_order() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe("shipping", &["order.*"], &subscriber.url(), json!({}))
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
    assert!(log
        .iter()
        .all(|r| r.traceparent.as_deref().is_some_and(is_valid_traceparent)));
    // Everything is acked: nothing pending for the group. The counters move once evrouter
    // has the answers, a little after the subscriber logged the requests.
    let stats = eventually(Duration::from_secs(30), async || {
        let stats = router.stats().await;
        let shipping = &stats["subscriptions"]["shipping"];
        if shipping["delivered"] == total as u64 && shipping["lag"] == 0 {
            Ok(stats)
        } else {
            Err(format!("{shipping}"))
        }
    })
    .await;
    let shipping = &stats["subscriptions"]["shipping"];
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
async fn two_subscriptions_each_get_everything_and_patterns_select_topics() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let all_orders = Subscriber::ok().await;
    let also_orders = Subscriber::ok().await;
    let payments = Subscriber::ok().await;
    router
        .subscribe("a", &["order.>"], &all_orders.url(), json!({}))
        .await;
    router
        .subscribe("b", &["*.created"], &also_orders.url(), json!({}))
        .await;
    router
        .subscribe(
            "c",
            &[r"re:^payment\.(captured|refunded)$"],
            &payments.url(),
            json!({}),
        )
        .await;
    let created = publish_keyed(&router, "order.created", 10, 10).await;
    for topic in ["payment.captured", "payment.failed", "payment.refunded"] {
        let mut event = keyed_event(1, "ord_p", 0);
        event["event_id"] = json!(format!("evt_payment_{}", topic.len()));
        router.publish_ok(topic, &event).await;
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
async fn bulk_mode_sends_arrays_of_different_keys() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "bulk",
            &["order.created"],
            &subscriber.url(),
            json!({"mode": "bulk", "bulk": {"max_events": 50, "max_wait_ms": 20}}),
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
async fn start_latest_skips_earlier_events_and_earliest_takes_them() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    publish_keyed(&router, "order.created", 5, 2).await;
    let latest = Subscriber::ok().await;
    let earliest = Subscriber::ok().await;
    router
        .subscribe("latest", &["order.created"], &latest.url(), json!({}))
        .await;
    router
        .subscribe(
            "earliest",
            &["order.created"],
            &earliest.url(),
            json!({"start": "earliest"}),
        )
        .await;
    let mut event = keyed_event(999, "ord_new", 0);
    event["event_id"] = json!("evt_order_999");
    router.publish_ok("order.created", &event).await;
    earliest.wait_for(11, Duration::from_secs(30)).await;
    latest.wait_for(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(latest.count(), 1);
    assert_eq!(latest.received()[0].event_id, "evt_order_999");
    assert_eq!(earliest.count(), 11);
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
    router
        .subscribe(
            "parallel",
            &["order.created"],
            &subscriber.url(),
            json!({"ordering": "none", "max_in_flight": 200}),
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
async fn delivery_resumes_by_itself_after_redis_loses_everything() {
    let mut redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.delivery.lease_ttl = "1s".into();
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "resilient",
            &["order.created"],
            &subscriber.url(),
            json!({}),
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
    let registry = router.get_json("/v1/subscriptions").await;
    assert_eq!(registry.as_array().map(Vec::len), Some(1));
    let stored: i64 = redis::cmd("HLEN")
        .arg("evr:subscriptions")
        .query(&mut redis.conn())
        .expect("hlen");
    assert_eq!(stored, 1, "the subscription was stored again");
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
    router
        .subscribe("shipping", &["order.created"], &subscriber.url(), json!({}))
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

/// A publish's `traceparent` is continued: the webhook request carries the same trace id
/// with a span id of its own (a child), a new one for each attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_continue_the_publishers_trace_as_child_spans() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let first_fails = Subscriber::with_rule(Arc::new(|r: &support::subscriber::Received| {
        if r.attempt == 1 {
            (500, String::new())
        } else {
            (200, String::new())
        }
    }))
    .await;
    router
        .subscribe(
            "traced",
            &["order.*"],
            &first_fails.url(),
            json!({"backoff": {"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": 0.0}}),
        )
        .await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = support::client()
        .post(router.url("/v1/publish/order.created"))
        .header("traceparent", parent)
        .json(&keyed_event(1, "ord_t", 0))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 200);
    let log = first_fails.wait_for(2, Duration::from_secs(30)).await;
    let spans: Vec<&str> = log
        .iter()
        .map(|r| r.traceparent.as_deref().unwrap_or_default())
        .collect();
    for span in &spans {
        assert!(is_valid_traceparent(span), "{span}");
        assert!(
            span.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && span.ends_with("-01"),
            "same trace: {span}"
        );
        assert!(!span.contains("b7ad6b7169203331"), "a child span: {span}");
    }
    assert_ne!(spans[0], spans[1], "each attempt is a span of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_on_one_partition_reads_on_without_lingering() {
    // One reader holds all 16 partitions of the stream and asks each for 32 of its 512:
    // the one partition with a backlog gives all it was asked for every time. Were the
    // reader to linger 10 s after each such read, 2,000 events would take minutes.
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.delivery.readers = 1;
    config.delivery.read_linger = "10s".into();
    let router = TestRouter::start(config).await;
    let total = publish_keyed(&router, "order.created", 1, 2_000).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "backlog",
            &["order.created"],
            &subscriber.url(),
            json!({"start": "earliest"}),
        )
        .await;
    subscriber.wait_for(total, Duration::from_secs(30)).await;
    let log = subscriber.received();
    assert_eq!(log.len(), total, "duplicates delivered");
    assert_in_key_order(&log, 1, 2_000);
    router.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_reads_by_its_own_linger_not_the_instance_default() {
    // The instance lingers 10 s after each read that leaves nothing waiting; the
    // subscription says 0. Ten events published one after another, each once the one
    // before has arrived, would take 90 s under the instance's linger.
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.delivery.readers = 1;
    config.delivery.read_linger = "10s".into();
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "eager",
            &["order.created"],
            &subscriber.url(),
            json!({"read": {"linger_ms": 0}}),
        )
        .await;
    let began = std::time::Instant::now();
    for n in 0..10u64 {
        router
            .publish_ok("order.created", &keyed_event(n, "ord_0", n))
            .await;
        subscriber
            .wait_for(
                n as usize + 1,
                Duration::from_secs(30).saturating_sub(began.elapsed()),
            )
            .await;
    }
    assert_in_key_order(&subscriber.received(), 1, 10);
    router.stop().await.expect("clean stop");
}
