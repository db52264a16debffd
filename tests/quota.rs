//! Quotas: a principal's publish rate (events and bytes per second) answers 429 with
//! `Retry-After` and the limit, storing nothing, on the native and the Dapr API; a batch
//! that can never fit answers 413; a principal may own only so many subscriptions.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{
    client, hash_token, order_event, test_config, AuthConfig, AuthMode, PrincipalConfig,
    RedisServer, RouterApi, TestRouter,
};

const TOKEN: &str = "quota-token";

/// Events stored in the order stream's partitions.
fn stored(redis: &RedisServer) -> u64 {
    let mut conn = redis.conn();
    (0..16)
        .map(|p| {
            redis::cmd("XLEN")
                .arg(format!("evr:{{order.{p}}}"))
                .query::<u64>(&mut conn)
                .unwrap_or(0)
        })
        .sum()
}

async fn send(router: &TestRouter, method: Method, path: &str, body: Value) -> reqwest::Response {
    client()
        .request(method, router.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_over_their_quota_are_told_when_to_come_back() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![PrincipalConfig {
            name: "order-service".into(),
            token_sha256: Some(hash_token(TOKEN)),
            publish: vec!["order.>".into()],
            subscribe: vec!["order.>".into()],
            publish_events_per_s: 100,
            max_subscriptions: 1,
            max_in_flight: 500,
            ..PrincipalConfig::default()
        }],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;
    let batch = |from: u64, n: u64| {
        Value::Array(
            (from..from + n)
                .map(|i| order_event(i, &format!("ord_{i}")))
                .collect(),
        )
    };
    let ok = send(
        &router,
        Method::POST,
        "/v1/publish/order.created",
        batch(0, 100),
    )
    .await;
    assert_eq!(ok.status().as_u16(), 200);
    // The bucket holds one second (100 events), so half of it is back 0.5 s after the
    // first batch: on a slow machine a batch of 50 may fit again. Publish until one is
    // refused, counting what was accepted.
    let mut accepted = 100;
    let limited = loop {
        let answer = send(
            &router,
            Method::POST,
            "/v1/publish/order.created",
            batch(accepted, 50),
        )
        .await;
        match answer.status().as_u16() {
            200 => accepted += 50,
            429 => break answer,
            other => panic!("publish answered {other}"),
        }
        assert!(accepted <= 2000, "never limited");
    };
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = limited.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("100 events/s"),
        "{body}"
    );
    let entries: Vec<Value> = (0..50)
        .map(|i| json!({"entryId": i.to_string(), "event": {"order_id": i}, "contentType": "application/json"}))
        .collect();
    let dapr = loop {
        let answer = send(
            &router,
            Method::POST,
            "/v1.0-alpha1/publish/bulk/pubsub/order.created",
            Value::Array(entries.clone()),
        )
        .await;
        match answer.status().as_u16() {
            200..=299 => accepted += 50,
            429 => break answer,
            other => panic!("bulk publish answered {other}"),
        }
        assert!(accepted <= 4000, "never limited");
    };
    assert!(dapr.headers().contains_key("retry-after"));

    let never = send(
        &router,
        Method::POST,
        "/v1/publish/order.created",
        batch(200, 101),
    )
    .await;
    assert_eq!(never.status().as_u16(), 413);
    assert_eq!(stored(&redis), accepted, "refused publishes stored nothing");

    let sub = |name: &str| json!({"name": name, "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"], "max_in_flight": 100});
    let greedy =
        json!({"name": "greedy", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    let refused = send(&router, Method::POST, "/v1/subscriptions", greedy).await;
    assert_eq!(
        refused.status().as_u16(),
        403,
        "the default max_in_flight of 1000 is over 500"
    );
    assert_eq!(
        send(&router, Method::POST, "/v1/subscriptions", sub("one"))
            .await
            .status()
            .as_u16(),
        201
    );
    let second = send(&router, Method::POST, "/v1/subscriptions", sub("two")).await;
    assert_eq!(second.status().as_u16(), 403);
    // Replacing the one it owns is not a new one.
    assert_eq!(
        send(&router, Method::PUT, "/v1/subscriptions/one", sub("one"))
            .await
            .status()
            .as_u16(),
        200
    );
}
