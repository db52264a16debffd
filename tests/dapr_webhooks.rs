//! Webhook subscribers of topics published through the Dapr API get JSON CloudEvents,
//! raw payloads included (as `data_base64`).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::dapr_app::{dapr_publish_ok, DaprApp, Hit};
use support::{free_port, test_config, RedisServer, RouterApi, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_subscribers_get_json_for_every_dapr_publish() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let port = free_port();
    let hook = DaprApp::default();
    hook.listen(port).await;
    router
        .subscribe(
            "native",
            &["mixed.>"],
            &format!("http://127.0.0.1:{port}/hook"),
            json!({"mode": "bulk"}),
        )
        .await;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/mixed/raw?metadata.rawPayload=true",
        "application/octet-stream",
        vec![0u8, 159, 146, 150],
    )
    .await;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/mixed/json",
        "application/json",
        r#"{"n":2}"#,
    )
    .await;
    let events = |hits: &[Hit]| -> Vec<Value> {
        hits.iter()
            .filter(|h| h.path == "/hook")
            .flat_map(|h| h.json().as_array().cloned().unwrap_or_default())
            .collect()
    };
    hook.wait(Duration::from_secs(10), |hits| events(hits).len() >= 2)
        .await;
    let events = events(&hook.hits());
    let raw = events
        .iter()
        .find(|b| b["topic"] == "mixed.raw")
        .expect("raw event as a CloudEvent");
    assert_eq!(raw["data_base64"], "AJ+Slg==");
    let data = events
        .iter()
        .find(|b| b["topic"] == "mixed/json")
        .expect("json event");
    assert_eq!(data["data"]["n"], 2);
    router.stop().await.expect("stop");
}
