//! evrouter's Dapr runtime API over gRPC, driven by the real Dapr Python SDK
//! (`tests/dapr-py`, pinned in its requirements): `DaprClient` publishes single events
//! (JSON, text with metadata, a raw payload) and a bulk, and meets evrouter's refusals with
//! Dapr's status codes; what was answered OK is in Redis, what was refused is not. Needs
//! Python 3 with venv; the SDK is installed into `tests/dapr-py/.venv` when missing.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::dapr_app::{dapr_publish_ok, stored_on};
use support::dapr_py::{python, results, sdk_dir, start_app};
use support::{
    eventually, free_port, hash_token, test_config, AppProtocol, AuthConfig, AuthMode,
    DaprAppConfig, PayloadFormat, PrincipalConfig, RedisServer, RouterApi, TestRouter,
};

const TOKEN: &str = "python-service-token";

/// Runs a script of `tests/dapr-py` against evrouter; its last JSON line.
async fn run_script(script: &str, env: &[(&str, String)]) -> Value {
    let python = python().await;
    let child = tokio::process::Command::new(python)
        .arg(script)
        .current_dir(sdk_dir())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DAPR_HEALTH_TIMEOUT", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the venv's python");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the SDK script did not finish within 90 s")
        .expect("python output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("a JSON summary line\nstdout: {stdout}\nstderr: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dapr_python_sdk_publishes_over_grpc_and_meets_daprs_status_codes() {
    let redis = RedisServer::start();
    let grpc_port = free_port();
    let mut config = test_config(&redis);
    config.dapr.grpc_listen = format!("127.0.0.1:{grpc_port}");
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![PrincipalConfig {
            name: "python-service".into(),
            token_sha256: Some(hash_token(TOKEN)),
            publish: vec!["orders".into(), "raw".into(), "bulk".into()],
            ..PrincipalConfig::default()
        }],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;
    let http_port = router.base.rsplit(':').next().expect("port").to_string();
    let env = [
        ("DAPR_HTTP_PORT", http_port.clone()),
        ("DAPR_GRPC_PORT", grpc_port.to_string()),
        ("DAPR_API_TOKEN", TOKEN.to_string()),
    ];
    let seen = run_script("publish.py", &env).await;
    eprintln!("{seen}");
    assert_eq!(seen["published"], 3, "{seen}");
    assert_eq!(seen["bulk_failed"], serde_json::json!([]), "{seen}");
    let refused = &seen["refused"];
    assert_eq!(refused["unknown_pubsub"], "NOT_FOUND", "{seen}");
    assert_eq!(refused["empty_topic"], "INVALID_ARGUMENT", "{seen}");
    assert_eq!(refused["bad_ttl"], "INVALID_ARGUMENT", "{seen}");
    assert_eq!(refused["forbidden_topic"], "PERMISSION_DENIED", "{seen}");
    assert_eq!(refused["get_state"], "UNIMPLEMENTED", "{seen}");

    // What was answered OK is stored, as the HTTP API stores it.
    let orders = stored_on(&redis, "orders");
    assert_eq!(orders.len(), 2, "the refused publishes stored nothing");
    let events: Vec<Value> = orders
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).expect("json"))
        .collect();
    assert!(orders.iter().all(|e| e.format == PayloadFormat::CloudEvent));
    let json_event = events
        .iter()
        .find(|e| e["data"]["order_id"] == "ord-py-1")
        .expect("the JSON event");
    assert_eq!(json_event["type"], "com.dapr.event.sent");
    assert_eq!(json_event["datacontenttype"], "application/json");
    assert_eq!(json_event["pubsubname"], "pubsub");
    assert_eq!(json_event["topic"], "orders");
    let noted = orders
        .iter()
        .zip(&events)
        .find(|(_, e)| e["id"] == "py-fixed-id")
        .expect("the event with metadata");
    assert_eq!(noted.1["type"], "order.noted");
    assert_eq!(noted.1["data"], "hello from python");
    assert_eq!(noted.0.key, "ord-py-2", "partitionKey is the key");
    let ttl = noted.0.expires_us.expect("ttlInSeconds is an expiry") - noted.0.received_us;
    assert_eq!(ttl, 120_000_000);
    let raw = stored_on(&redis, "raw");
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].format, PayloadFormat::Raw);
    assert_eq!(raw[0].payload, vec![9u8, 8, 7]);
    let bulk = stored_on(&redis, "bulk");
    assert_eq!(bulk.len(), 5, "every bulk entry stored");
    assert!(bulk.iter().all(|e| e.key == "bulk-key"));
    assert!(stored_on(&redis, "secret").is_empty());

    // Without the token: UNAUTHENTICATED, nothing stored.
    let seen = run_script(
        "publish.py",
        &[
            ("DAPR_HTTP_PORT", http_port),
            ("DAPR_GRPC_PORT", grpc_port.to_string()),
        ],
    )
    .await;
    assert_eq!(seen["first_error"], "UNAUTHENTICATED", "{seen}");
    assert_eq!(stored_on(&redis, "orders").len(), 2);
    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dapr_ext_grpc_app_gets_its_events_over_grpc_with_retry_drop_and_dead_letters() {
    let redis = RedisServer::start();
    let app_port = free_port();
    let file = tempfile::NamedTempFile::new().expect("results file");
    let results_path = file.path().to_path_buf();
    let _app = start_app(app_port, &results_path, None).await;
    // A declarative bulk subscription for the app, to a topic it does not list: its
    // handler of any topic gets it through OnBulkTopicEvent.
    let declarative = tempfile::tempdir().expect("dir");
    std::fs::write(
        declarative.path().join("bulk.yaml"),
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: bulk-orders\n\
         spec:\n  pubsubname: pubsub\n  topic: bulk-orders\n  bulkSubscribe:\n    enabled: true\n\
         \x20   maxMessagesCount: 10\n    maxAwaitDurationMs: 200\nscopes:\n- py-grpc-app\n",
    )
    .expect("write");
    let mut config = test_config(&redis);
    config.dapr.subscriptions_dir = Some(declarative.path().to_path_buf());
    config.dapr.apps = vec![DaprAppConfig {
        id: "py-grpc-app".into(),
        url: format!("http://127.0.0.1:{app_port}"),
        protocol: AppProtocol::Grpc,
        max_attempts: 3,
        retry_initial_ms: 50,
        ..DaprAppConfig::default()
    }];
    config.dapr.refresh_interval = "1s".into();
    let router = TestRouter::start(config).await;
    // Its subscriptions are read with ListTopicSubscriptions once it serves.
    eventually(Duration::from_secs(30), async || {
        let subs = router.get_json("/v1/subscriptions").await;
        let n = subs.as_array().map_or(0, |s| {
            s.iter()
                .filter(|s| {
                    s["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("dapr-py-grpc-app"))
                })
                .count()
        });
        if n == 7 {
            Ok(())
        } else {
            Err(format!("{n} subscriptions: {subs}"))
        }
    })
    .await;
    let publish = |topic: &'static str, body: &'static str, query: &'static str| {
        let router = &router;
        async move {
            dapr_publish_ok(
                router,
                &format!("/v1.0/publish/pubsub/{topic}{query}"),
                "application/json",
                body,
            )
            .await
        }
    };
    publish("orders", r#"{"order_id":"ord-g1"}"#, "").await;
    publish(
        "orders",
        r#"{"order_id":"ord-g2"}"#,
        "?metadata.cloudevent.type=order.express",
    )
    .await;
    publish("flaky", r#"{"n":1}"#, "").await;
    publish("poison", r#"{"n":2}"#, "").await;
    publish("doomed", r#"{"n":3}"#, "").await;
    for body in [
        r#"{"n":10,"answer":"success"}"#,
        r#"{"n":11,"answer":"retry"}"#,
        r#"{"n":12,"answer":"drop"}"#,
        r#"{"n":13,"answer":"success"}"#,
        r#"{"n":14,"answer":"success"}"#,
    ] {
        publish("bulk-orders", body, "").await;
    }
    eventually(Duration::from_secs(60), async || {
        let got = results(&results_path);
        let count = |k: &str| got[k].as_array().map_or(0, Vec::len);
        let done = count("orders") == 1
            && count("express") == 1
            && count("flaky") == 3
            && count("poison") == 1
            && count("doomed") == 3
            && count("dead") == 1
            && count("bulk") == 6;
        if done {
            Ok(())
        } else {
            Err(format!("{got}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = results(&results_path);
    assert_eq!(got["orders"][0]["data"]["order_id"], "ord-g1", "{got}");
    assert_eq!(
        got["express"][0]["data"]["order_id"], "ord-g2",
        "the rule's route: {got}"
    );
    assert_eq!(got["express"][0]["type"], "order.express", "{got}");
    assert_eq!(
        got["flaky"].as_array().map(Vec::len),
        Some(3),
        "RETRY twice, then SUCCESS: {got}"
    );
    assert_eq!(
        got["poison"].as_array().map(Vec::len),
        Some(1),
        "DROP is not retried: {got}"
    );
    assert_eq!(
        got["doomed"].as_array().map(Vec::len),
        Some(3),
        "max_attempts: {got}"
    );
    assert_eq!(
        got["dead"][0]["data"]["n"], 3,
        "then the dead-letter topic: {got}"
    );
    // The bulk subscription: every entry through OnBulkTopicEvent (not its Alpha1 name),
    // each answered for itself: the RETRY entry came again alone, the DROP entry did not.
    let bulk = got["bulk"].as_array().cloned().unwrap_or_default();
    assert!(
        bulk.iter()
            .all(|e| e["via"] == "OnBulkTopicEvent" && e["topic"] == "bulk-orders"),
        "{got}"
    );
    let times = |n: u64| bulk.iter().filter(|e| e["data"]["n"] == n).count();
    assert_eq!(
        [10, 11, 12, 13, 14].map(times),
        [1, 2, 1, 1, 1],
        "each entry's own answer: {got}"
    );
    router.stop().await.expect("stop");
}

/// With Redis down a gRPC publish is UNAVAILABLE, never OK, single or bulk; with Redis
/// back the same call is OK and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_publish_redis_did_not_store_is_unavailable() {
    use dapr::dapr::proto::runtime::v1 as pb;
    let mut redis = RedisServer::start();
    let grpc_port = free_port();
    let mut config = test_config(&redis);
    config.dapr.grpc_listen = format!("127.0.0.1:{grpc_port}");
    config.redis.response_timeout = "300ms".into();
    config.server.publish_timeout = "1s".into();
    let router = TestRouter::start(config).await;
    let mut client = eventually_connect(grpc_port).await;
    let publish = || pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "orders".into(),
        data: br#"{"order_id":"ord-down"}"#.to_vec(),
        data_content_type: "application/json".into(),
        metadata: Default::default(),
    };
    let bulk = || pb::BulkPublishRequest {
        pubsub_name: "pubsub".into(),
        topic: "orders".into(),
        entries: vec![pb::BulkPublishRequestEntry {
            entry_id: "1".into(),
            event: br#"{"order_id":"ord-down-bulk"}"#.to_vec(),
            content_type: "application/json".into(),
            metadata: Default::default(),
        }],
        metadata: Default::default(),
    };
    client
        .publish_event(publish())
        .await
        .expect("stored while Redis is up");
    redis.kill();
    let down = client.publish_event(publish()).await.expect_err("not OK");
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    let down = client.bulk_publish_event(bulk()).await.expect_err("not OK");
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    redis.restart();
    eventually(Duration::from_secs(30), async || {
        match client.clone().publish_event(publish()).await {
            Ok(_) => Ok(()),
            Err(status) => Err(format!("{status:?}")),
        }
    })
    .await;
    assert!(!stored_on(&redis, "orders").is_empty());
    router.stop().await.expect("stop");
}

/// A gRPC publish is bounded as an HTTP body is (`server.max_body_bytes`): an event over
/// it, single or in a bulk, is RESOURCE_EXHAUSTED and not stored (found: a 3 MB event taken
/// while HTTP stops at 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_publish_is_bounded_like_an_http_body() {
    use dapr::dapr::proto::runtime::v1 as pb;
    let redis = RedisServer::start();
    let grpc_port = free_port();
    let mut config = test_config(&redis);
    config.dapr.grpc_listen = format!("127.0.0.1:{grpc_port}");
    config.server.max_body_bytes = 64 * 1024;
    let router = TestRouter::start(config).await;
    let mut client = eventually_connect(grpc_port)
        .await
        .max_encoding_message_size(16 << 20);
    let event = |bytes: usize| {
        format!(r#"{{"order_id":"ord-big","pad":"{}"}}"#, "x".repeat(bytes)).into_bytes()
    };
    let publish = |data: Vec<u8>| pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "orders".into(),
        data,
        data_content_type: "application/json".into(),
        metadata: Default::default(),
    };
    for size in [64 * 1024 + 1, 3 << 20] {
        let refused = client
            .publish_event(publish(event(size)))
            .await
            .expect_err("over max_body_bytes");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
            ),
            "{size} bytes: {refused:?}"
        );
    }
    let entries = (0..4)
        .map(|i| pb::BulkPublishRequestEntry {
            entry_id: i.to_string(),
            event: event(20 * 1024),
            content_type: "application/json".into(),
            metadata: Default::default(),
        })
        .collect();
    let refused = client
        .bulk_publish_event(pb::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            entries,
            metadata: Default::default(),
        })
        .await
        .expect_err("80 KB of entries over 64 KiB");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        stored_on(&redis, "orders").is_empty(),
        "an oversized event was stored"
    );
    client
        .publish_event(publish(event(60 * 1024)))
        .await
        .expect("an event within the bound is stored");
    assert_eq!(stored_on(&redis, "orders").len(), 1);
    router.stop().await.expect("stop");
}

/// A gRPC client of evrouter's Dapr API, once it answers.
async fn eventually_connect(
    port: u16,
) -> dapr::dapr::proto::runtime::v1::dapr_client::DaprClient<tonic::transport::Channel> {
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(client) =
            dapr::dapr::proto::runtime::v1::dapr_client::DaprClient::connect(url.clone()).await
        {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gRPC API at {url} does not answer");
}
