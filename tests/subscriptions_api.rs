//! The subscriptions API: specs are validated with a path per problem, the same spec
//! again is accepted, a different one under the same name is a conflict, and a
//! subscription can be replaced, read and deleted.

mod support;

use serde_json::json;
use support::{client, test_config, RedisServer, RouterApi, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_api_validates_and_detects_conflicts() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let spec = json!({"name": "shipping", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/events"]});
    assert_eq!(router.create_subscription(&spec).await.0, 201);
    assert_eq!(
        router.create_subscription(&spec).await.0,
        200,
        "same body again"
    );
    let mut different = spec.clone();
    different["topics"] = json!(["order.>"]);
    assert_eq!(router.create_subscription(&different).await.0, 409);
    let put = client()
        .put(router.url("/v1/subscriptions/shipping"))
        .json(&different)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let got = router.get_json("/v1/subscriptions/shipping").await;
    assert_eq!(got["topics"], json!(["order.>"]));
    assert_eq!(got["max_attempts"], 10, "defaults are filled in");
    let bad = json!({"name": "Bad Name", "topics": ["order..x"], "endpoints": ["ftp://x"], "max_attempts": 0, "mode": "sometimes"});
    let (status, body) = router.create_subscription(&bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_subscription");
    assert_eq!(body["error"]["details"][0]["path"], "/mode");
    let bad = json!({"name": "Bad Name", "topics": ["order..x"], "endpoints": ["ftp://x"], "max_attempts": 0});
    let (_, body) = router.create_subscription(&bad).await;
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
    let (_, body) = router.create_subscription(&unknown).await;
    assert!(body["error"]["details"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("colour"));
    let list = router.get_json("/v1/subscriptions").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(
        router
            .status_of(reqwest::Method::DELETE, "/v1/subscriptions/shipping")
            .await,
        204
    );
    assert_eq!(
        router
            .status_of(reqwest::Method::DELETE, "/v1/subscriptions/shipping")
            .await,
        404
    );
    assert_eq!(
        router
            .status_of(reqwest::Method::GET, "/v1/subscriptions/shipping")
            .await,
        404
    );
}
