//! Declarative Dapr subscriptions (YAML files in `subscriptions_dir`): both API versions
//! are read, only those scoped to the app apply, and unreadable files are skipped.

mod support;

use std::time::Duration;

use serde_json::json;
use support::dapr_app::{app_config, dapr_publish_ok, refresh_app, DaprApp};
use support::{free_port, test_config, RedisServer, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_subscriptions_apply_to_their_scopes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("orders.yaml"),
        r#"apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: declared-orders
spec:
  pubsubname: pubsub
  topic: declared
  routes:
    rules:
      - match: event.data.vip == true
        path: /declared-vip
    default: /declared
scopes:
  - shop
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: not-ours
spec:
  pubsubname: pubsub
  topic: elsewhere
  routes:
    default: /elsewhere
scopes:
  - billing
"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("legacy.yml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata:\n  name: legacy\nspec:\n  pubsubname: pubsub\n  topic: legacy\n  route: /legacy\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("broken.yaml"), "spec: [unclosed").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a subscription").expect("write");

    let port = free_port();
    // The app lists nothing itself.
    let app = DaprApp::listing(json!([]));
    app.listen(port).await;
    let mut config = test_config(&redis);
    config.dapr.apps = vec![app_config("shop", port)];
    config.dapr.subscriptions_dir = Some(dir.path().to_path_buf());
    let router = TestRouter::start(config).await;
    let (_, refreshed) = refresh_app(&router, "shop").await;
    assert_eq!(
        refreshed["subscriptions"].as_array().map(Vec::len),
        Some(2),
        "{refreshed}"
    );
    for (topic, body) in [
        ("declared", r#"{"vip":true}"#),
        ("declared", r#"{"vip":false}"#),
        ("legacy", r#"{"n":1}"#),
        ("elsewhere", r#"{"n":1}"#),
    ] {
        dapr_publish_ok(
            &router,
            &format!("/v1.0/publish/pubsub/{topic}"),
            "application/json",
            body,
        )
        .await;
    }
    app.wait(Duration::from_secs(10), |hits| hits.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = app.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(app.on("/declared-vip").len(), 1, "{paths:?}");
    assert_eq!(app.on("/declared").len(), 1, "{paths:?}");
    assert_eq!(app.on("/legacy").len(), 1, "{paths:?}");
    assert!(app.on("/elsewhere").is_empty(), "{paths:?}");
    router.stop().await.expect("stop");
}
