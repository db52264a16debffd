//! Dapr apps against a real Redis and a real HTTP app: `/dapr/subscribe` read into
//! subscriptions (also when the app starts late, and again on refresh), routing rules,
//! RETRY/DROP answers, raw and bulk deliveries, dead-letter topics and their replay, and
//! events that expire before they are delivered.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::dapr_app::{app_config, dapr_publish_ok, refresh_app, stored_on, DaprApp};
use support::{eventually, free_port, test_config, RedisServer, RouterApi, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_subscriptions_route_retry_drop_and_dead_letter() {
    let redis = RedisServer::start();
    let port = free_port();
    let app = DaprApp::listing(json!([
        {"pubsubname": "pubsub", "topic": "orders", "routes": {
            "rules": [
                {"match": "event.type == \"order.express\"", "path": "/express"},
                {"match": "has(event.data.amount) && event.data.amount > 100", "path": "big"}
            ],
            "default": "/orders"
        }},
        {"pubsubname": "pubsub", "topic": "strict", "routes": {
            "rules": [{"match": "event.data.kind == \"wanted\"", "path": "/wanted"}]
        }},
        {"pubsubname": "pubsub", "topic": "flaky", "route": "/retry-once"},
        {"pubsubname": "pubsub", "topic": "junk", "route": "/drop"},
        {"pubsubname": "pubsub", "topic": "doomed", "route": "/always-retry", "deadLetterTopic": "doomed-dead"},
        {"pubsubname": "pubsub", "topic": "doomed-dead", "route": "/dead"},
        {"pubsubname": "pubsub", "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}},
        {"pubsubname": "pubsub", "topic": "many", "route": "/bulk", "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 50}},
        {"pubsubname": "unknown", "topic": "x", "route": "/x"}
    ]));
    let mut config = test_config(&redis);
    config.dapr.apps = vec![app_config("shop", port)];
    config.dapr.refresh_interval = "1s".into();
    let router = TestRouter::start(config).await;
    // The app comes up after evrouter: it is tried again until it answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.listen(port).await;
    eventually(Duration::from_secs(15), async || {
        let subs = router.get_json("/v1/subscriptions").await;
        if subs.as_array().is_some_and(|s| s.len() == 8) {
            Ok(())
        } else {
            Err(format!("subscriptions not read: {subs}"))
        }
    })
    .await;

    let publish = async |topic: &str, body: Value| {
        dapr_publish_ok(
            &router,
            &format!("/v1.0/publish/pubsub/{topic}"),
            "application/json",
            body.to_string(),
        )
        .await
    };
    // Routing rules: first match wins, else the default.
    let express = r#"{"specversion":"1.0","id":"x1","source":"s","type":"order.express","data":{"amount":500}}"#;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders",
        "application/cloudevents+json",
        express,
    )
    .await;
    publish("orders", json!({"amount": 250})).await;
    publish("orders", json!({"amount": 5})).await;
    // No rule and no default: acked, counted, not sent.
    publish("strict", json!({"kind": "other"})).await;
    publish("strict", json!({"kind": "wanted"})).await;
    publish("flaky", json!({"n": 1})).await;
    publish("junk", json!({"n": 1})).await;
    publish("doomed", json!({"n": 1})).await;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
        "application/octet-stream",
        vec![1u8, 2, 3],
    )
    .await;
    dapr_publish_ok(
        &router,
        "/v1.0-alpha1/publish/bulk/pubsub/many",
        "application/json",
        json!((0..6).map(|n| json!({"entryId": n.to_string(), "event": {"n": n}, "contentType": "application/json"})).collect::<Vec<_>>()).to_string(),
    ).await;

    app.wait(Duration::from_secs(20), |hits| {
        let on = |p: &str| hits.iter().filter(|h| h.path == p).count();
        on("/express") == 1
            && on("/big") == 1
            && on("/orders") == 1
            && on("/wanted") == 1
            && on("/retry-once") == 2
            && on("/drop") == 1
            && on("/always-retry") == 3
            && on("/dead") == 1
            && on("/raw") == 1
            && hits
                .iter()
                .filter(|h| h.path == "/bulk")
                .flat_map(|h| h.json()["entries"].as_array().cloned().unwrap_or_default())
                .count()
                == 10
    })
    .await;
    // Deliveries are CloudEvents with the subscription's pubsub and topic.
    let express = &app.on("/express")[0];
    assert_eq!(express.content_type, "application/cloudevents+json");
    assert_eq!(express.json()["id"], "x1");
    assert_eq!(express.json()["topic"], "orders");
    assert_eq!(express.json()["pubsubname"], "pubsub");
    assert_eq!(app.on("/big")[0].json()["data"]["amount"], 250);
    assert_eq!(app.on("/orders")[0].json()["data"]["amount"], 5);
    // The raw payload arrives as published.
    let raw = &app.on("/raw")[0];
    assert_eq!(raw.body.as_ref(), &[1u8, 2, 3]);
    assert_eq!(raw.content_type, "application/octet-stream");
    // The dead letter carries the original event to the dead-letter topic's route.
    let dead = app.on("/dead")[0].json();
    assert_eq!(dead["data"]["n"], 1);
    assert_eq!(dead["topic"], "doomed-dead");
    // Bulk: one request shape, every event delivered once with SUCCESS, odd ones after a
    // RETRY, 4 again after the app left it out of its statuses.
    let bulk = app.on("/bulk");
    let first = bulk[0].json();
    assert_eq!(first["type"], "com.dapr.event.sent.bulk");
    assert_eq!(first["topic"], "many");
    let mut ns: Vec<u64> = bulk
        .iter()
        .flat_map(|h| h.json()["entries"].as_array().cloned().unwrap_or_default())
        .map(|e| e["event"]["data"]["n"].as_u64().expect("n"))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, vec![0, 1, 1, 2, 3, 3, 4, 4, 5, 5]);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.on("/drop").len(), 1, "DROP is not retried");
    let stats = router.stats().await;
    let subs = stats["subscriptions"].as_object().expect("subs");
    let total =
        |field: &str| -> u64 { subs.values().map(|s| s[field].as_u64().unwrap_or(0)).sum() };
    assert_eq!(total("unrouted"), 1);
    assert_eq!(total("dropped"), 1);
    assert_eq!(total("dead_letter_topic"), 1);
    assert_eq!(total("dead_lettered"), 1);

    // A replayed dead letter goes to the app's route as a CloudEvent again.
    let subs = router.get_json("/v1/subscriptions").await;
    let doomed = subs
        .as_array()
        .expect("subs")
        .iter()
        .find(|s| s["dapr"]["topic"] == "doomed")
        .and_then(|s| s["name"].as_str())
        .expect("doomed subscription")
        .to_string();
    let (status, _) = router.post_empty(&format!("/v1/dlq/{doomed}/replay")).await;
    assert_eq!(status, 200);
    let retried = app.on("/always-retry");
    assert_eq!(retried.len(), 4);
    assert_eq!(retried[3].content_type, "application/cloudevents+json");
    assert_eq!(retried[3].json()["data"]["n"], 1);

    // An app that answers 404 has not said what it no longer wants: nothing is removed.
    let listed = app.set_subscriptions(Value::Null);
    assert_eq!(refresh_app(&router, "shop").await.0, 200);
    let subs = router.get_json("/v1/subscriptions").await;
    assert_eq!(subs.as_array().map(Vec::len), Some(8), "{subs}");
    app.set_subscriptions(listed);

    // An app that stops listing a subscription loses it.
    app.subscriptions
        .lock()
        .expect("subs")
        .as_array_mut()
        .expect("list")
        .truncate(2);
    // It takes two answers in a row that leave a subscription out.
    for _ in 0..2 {
        assert_eq!(refresh_app(&router, "shop").await.0, 200);
    }
    let subs = router.get_json("/v1/subscriptions").await;
    assert_eq!(subs.as_array().map(Vec::len), Some(2), "{subs}");
    assert_eq!(refresh_app(&router, "nope").await.0, 404);
    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_events_are_not_delivered() {
    let redis = RedisServer::start();
    let port = free_port();
    let app = DaprApp::listing(json!([
        {"pubsubname": "pubsub", "topic": "fleeting", "route": "/always-retry"}
    ]));
    app.listen(port).await;
    let mut config = test_config(&redis);
    let mut shop = app_config("shop", port);
    shop.max_attempts = 50;
    shop.retry_initial_ms = 400;
    config.dapr.apps = vec![shop];
    let router = TestRouter::start(config).await;
    eventually(Duration::from_secs(10), async || {
        let subs = router.get_json("/v1/subscriptions").await;
        if subs.as_array().is_none_or(|s| s.is_empty()) {
            Err(format!("no subscription: {subs}"))
        } else {
            Ok(())
        }
    })
    .await;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/fleeting?metadata.ttlInSeconds=1",
        "application/json",
        r#"{"n":1}"#,
    )
    .await;
    let stored = stored_on(&redis, "fleeting");
    assert!(stored[0].expires_us.is_some(), "{:?}", stored[0]);
    // Attempts at about 0, 0.4, 1.2 and 2.8 s (±20%): those after the first second are
    // past the TTL and not made.
    let sub = eventually(Duration::from_secs(30), async || {
        let stats = router.stats().await;
        let sub = stats["subscriptions"]
            .as_object()
            .and_then(|s| s.values().next().cloned())
            .expect("stats");
        if sub["expired"] == 1 {
            Ok(sub)
        } else {
            Err(format!("not expired yet: {sub}"))
        }
    })
    .await;
    assert_eq!(sub["expired"], 1, "{sub}");
    assert_eq!(sub["in_flight"], 0, "{sub}");
    assert_eq!(sub["dead_lettered"], 0, "{sub}");
    let attempts = app.on("/always-retry").len();
    assert!((1..=3).contains(&attempts), "{attempts} attempts");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        app.on("/always-retry").len(),
        attempts,
        "no attempt after expiry"
    );
    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_get_their_api_token() {
    // A variable of this test alone (`EVR_TEST_*` is never a config override).
    std::env::set_var("EVR_TEST_APP_TOKEN_TOKENED", "app-secret-1");
    let redis = RedisServer::start();
    let port = free_port();
    let app =
        DaprApp::listing(json!([{"pubsubname": "pubsub", "topic": "tokened", "route": "/in"}]));
    app.listen(port).await;
    let mut config = test_config(&redis);
    let mut tokened = app_config("tokened", port);
    tokened.app_api_token_env = Some("EVR_TEST_APP_TOKEN_TOKENED".into());
    config.dapr.apps = vec![tokened];
    let router = TestRouter::start(config).await;
    eventually(Duration::from_secs(10), async || {
        let subs = router.get_json("/v1/subscriptions").await;
        if subs.as_array().is_some_and(|s| s.len() == 1) {
            Ok(())
        } else {
            Err(format!("not read yet: {subs}"))
        }
    })
    .await;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/tokened",
        "application/json",
        "{\"n\":1}",
    )
    .await;
    app.wait(Duration::from_secs(10), |hits| !hits.is_empty())
        .await;
    let hits = app.hits();
    assert_eq!(hits[0].api_token.as_deref(), Some("app-secret-1"));
    let asked = app.subscribe_tokens.lock().expect("tokens").clone();
    assert!(
        !asked.is_empty() && asked.iter().all(|t| t.as_deref() == Some("app-secret-1")),
        "{asked:?}"
    );
}
