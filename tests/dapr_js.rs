//! evrouter as a Dapr sidecar for the real Dapr JavaScript SDK (`tests/dapr-js`): a
//! `DaprServer` app subscribes (plain, routing rules, RETRY then SUCCESS, DROP,
//! dead-letter topic, bulk) and a `DaprClient` publishes (objects, text, a CloudEvent,
//! bulk), over HTTP and in the SDK's gRPC mode. Needs Node.js and npm; the SDK is
//! installed from the lock file when missing.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::{free_port, test_config, AppProtocol, DaprAppConfig, RedisServer, TestRouter};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dapr-js")
}

/// Installs the pinned SDK when `node_modules` is missing.
async fn install_sdk() {
    let dir = sdk_dir();
    if dir.join("node_modules/@dapr/dapr").is_dir() {
        return;
    }
    let status = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .await
        .expect("npm (Node.js) must be installed to run the Dapr SDK test");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dapr_javascript_sdk_publishes_and_subscribes_through_evrouter() {
    run_sdk(AppProtocol::Http).await;
}

/// The same, with the SDK's client and server in gRPC mode: `PublishEvent`,
/// `BulkPublishEventAlpha1` and `GetMetadata` on evrouter's gRPC API; the app's
/// `AppCallback` server read with `ListTopicSubscriptions` and called with `OnTopicEvent`
/// and (its only bulk call) `OnBulkTopicEventAlpha1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dapr_javascript_sdk_in_grpc_mode_publishes_and_subscribes_through_evrouter() {
    run_sdk(AppProtocol::Grpc).await;
}

async fn run_sdk(protocol: AppProtocol) {
    install_sdk().await;
    let redis = RedisServer::start();
    let app_port = free_port();
    let grpc_port = free_port();
    let mut config = test_config(&redis);
    config.dapr.apps = vec![DaprAppConfig {
        id: "js-app".into(),
        url: format!("http://127.0.0.1:{app_port}"),
        max_attempts: 3,
        retry_initial_ms: 50,
        protocol,
        ..DaprAppConfig::default()
    }];
    config.dapr.refresh_interval = "1s".into();
    let grpc = protocol == AppProtocol::Grpc;
    if grpc {
        config.dapr.grpc_listen = format!("127.0.0.1:{grpc_port}");
    }
    let router = TestRouter::start(config).await;
    let port = router.base.rsplit(':').next().expect("port").to_string();
    let child = tokio::process::Command::new("node")
        .arg("run.mjs")
        .current_dir(sdk_dir())
        .env("PROTOCOL", if grpc { "grpc" } else { "http" })
        .env("DAPR_GRPC_PORT", grpc_port.to_string())
        .env("DAPR_HTTP_PORT", &port)
        .env("APP_PORT", app_port.to_string())
        .env("APP_ID", "js-app")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the Dapr SDK test");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the SDK test did not finish within 90 s")
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK test failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .expect("a JSON summary line");
    eprintln!("{summary}");
    assert_eq!(summary["missing"], serde_json::json!([]), "{summary}");
    assert_eq!(
        summary["subscriptions"].as_array().map(Vec::len),
        Some(7),
        "{summary}"
    );
    router.stop().await.expect("stop");
}
