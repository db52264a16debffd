//! The publish path against a real Redis: receipts, stored envelopes, validation, batches,
//! partitioning and order, dedup, trace context.

mod support;

use serde_json::{json, Value};
use support::{
    client, is_valid_traceparent, order_event, partition_of, test_config, KeyRuleConfig,
    RedisServer, RouterApi, StreamConfig, TestRouter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_is_stored_as_sent_with_enrichment() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let event = order_event(1, "ord_42");
    let raw = serde_json::to_vec(&event).expect("json");
    let response = client()
        .post(router.url("/v1/publish/order.created"))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(raw.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let receipt: Value = response.json().await.expect("json");
    assert_eq!(receipt["event_id"], "evt_order_1");
    assert_eq!(receipt["stream"], "order");
    let partition = receipt["partition"].as_u64().expect("partition");
    assert_eq!(partition, u64::from(partition_of("ord_42", 16)));
    assert!(receipt.get("duplicate").is_none());

    let stored = redis.all_envelopes();
    assert_eq!(stored.len(), 1);
    let (key, id, envelope) = &stored[0];
    assert_eq!(key, &format!("evr:{{order.{partition}}}"));
    assert_eq!(id, receipt["id"].as_str().expect("id"));
    assert_eq!(envelope.payload, raw, "the client's JSON is stored as sent");
    assert_eq!(envelope.topic, "order.created");
    assert_eq!(envelope.key, "ord_42");
    assert_eq!(envelope.service, "order-service");
    assert_eq!(envelope.correlation_id, "corr_1");
    assert_eq!(
        envelope.traceparent,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(envelope.received_us > 1_600_000_000_000_000);
    assert_eq!(envelope.sequence, None);
    router.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_traceparent_gets_a_new_one_and_sequence_is_kept() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let mut event = order_event(2, "ord_1");
    event["metadata"]["sequence"] = json!(7);
    router.publish_ok("order.created", &event).await;
    let stored = redis.all_envelopes();
    assert!(is_valid_traceparent(&stored[0].2.traceparent));
    assert_eq!(stored[0].2.sequence, Some(7));
    // An invalid header is replaced, and its tracestate is not kept with the new trace.
    let response = client()
        .post(router.url("/v1/publish/order.created"))
        .header("traceparent", "00-not-a-trace-01")
        .header("tracestate", "vendor=1")
        .json(&order_event(3, "ord_2"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let stored = redis.all_envelopes();
    let third = stored
        .iter()
        .find(|(_, _, e)| e.event_id == "evt_order_3")
        .expect("stored");
    assert!(is_valid_traceparent(&third.2.traceparent));
    assert_ne!(third.2.traceparent, "00-not-a-trace-01");
    assert_eq!(third.2.tracestate, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_answered_per_event_in_order() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let batch: Vec<Value> = (0..100)
        .map(|n| order_event(n, &format!("ord_{}", n % 7)))
        .collect();
    let body = router
        .publish_ok("order.created", &Value::Array(batch))
        .await;
    let receipts = body.as_array().expect("array");
    assert_eq!(receipts.len(), 100);
    for (n, receipt) in receipts.iter().enumerate() {
        assert_eq!(receipt["event_id"], format!("evt_order_{n}"));
        let expected = partition_of(&format!("ord_{}", n % 7), 16);
        assert_eq!(receipt["partition"], expected);
    }
    assert_eq!(redis.all_envelopes().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_lands_in_one_partition_in_publish_order() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    // Sequential singles and batches, interleaved with other keys.
    let mut n = 0;
    for round in 0..10 {
        router
            .publish_ok("order.created", &order_event(n, "ord_same"))
            .await;
        n += 1;
        let batch: Vec<Value> = (0..5)
            .map(|i| {
                let key = if i % 2 == 0 {
                    "ord_same".to_string()
                } else {
                    format!("ord_{round}_{i}")
                };
                order_event(n + i, &key)
            })
            .collect();
        n += 5;
        router
            .publish_ok("order.created", &Value::Array(batch))
            .await;
    }
    let same: Vec<_> = redis
        .all_envelopes()
        .into_iter()
        .filter(|(_, _, e)| e.key == "ord_same")
        .collect();
    assert_eq!(same.len(), 10 + 10 * 3);
    let partition_key = &same[0].0;
    assert!(same.iter().all(|(k, _, _)| k == partition_key));
    // XRANGE order is the stream order; event numbers must increase along it.
    let numbers: Vec<u64> = same
        .iter()
        .map(|(_, _, e)| {
            e.event_id
                .trim_start_matches("evt_order_")
                .parse()
                .expect("number")
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "out of order: {numbers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_event_is_refused_whole() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let mut bad = order_event(3, "ord_1");
    bad["metadata"]
        .as_object_mut()
        .expect("object")
        .remove("correlation_id");
    bad["timestamp"] = json!("not a time");
    let batch = json!([order_event(1, "ord_1"), order_event(2, "ord_1"), bad, 17]);
    let (status, body) = router.publish("order.created", &batch).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_event");
    let details = body["error"]["details"].as_array().expect("details");
    let has = |index: u64, path: &str| {
        details
            .iter()
            .any(|d| d["index"] == index && d["path"] == path)
    };
    assert!(has(2, "/metadata/correlation_id"), "{details:?}");
    assert!(has(2, "/timestamp"), "{details:?}");
    assert!(has(3, ""), "{details:?}");
    assert!(!details.iter().any(|d| d["index"] == 0 || d["index"] == 1));
    assert!(
        redis.all_envelopes().is_empty(),
        "nothing of a refused batch is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_their_paths() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"event_id": "order-1"}), "/event_id"),
        (json!({"event_type": "ORDER"}), "/event_type"),
        (json!({"timestamp": "2026-13-45T99:00:00Z"}), "/timestamp"),
        (json!({"version": "v1"}), "/version"),
        (json!({"data": "text"}), "/data"),
        (
            json!({"metadata": {"service": "s", "version": "1"}}),
            "/metadata/correlation_id",
        ),
        (
            json!({"metadata": {"correlation_id": 5, "service": "s", "version": "1"}}),
            "/metadata/correlation_id",
        ),
    ];
    for (patch, path) in cases {
        let mut event = order_event(1, "ord_1");
        for (k, v) in patch.as_object().expect("object") {
            event[k] = v.clone();
        }
        let (status, body) = router.publish("order.created", &event).await;
        assert_eq!(status, 400, "{patch}");
        let details = body["error"]["details"].as_array().expect("details");
        assert!(
            details.iter().any(|d| d["path"] == path),
            "{path} not in {details:?}"
        );
        assert!(details.iter().all(|d| d.get("index").is_none()));
    }
    // The platform's own examples use two-segment types, which the default accepts.
    let mut event = order_event(1, "ord_1");
    event["event_type"] = json!("customer.profile.updated");
    router.publish_ok("customer.profile.updated", &event).await;
    assert_eq!(redis.all_envelopes().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_schemas_and_type_must_match_topic() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("order.created.json"),
        json!({"properties": {"data": {"required": ["order_id", "total_amount"],
               "properties": {"total_amount": {"type": "number", "minimum": 0}}}}})
        .to_string(),
    )
    .expect("schema");
    let mut config = test_config(&redis);
    config.validation.schema_dir = Some(dir.path().to_path_buf());
    config.streams.push(StreamConfig {
        name: "order".into(),
        require_type_match: Some(true),
        ..StreamConfig::default()
    });
    let router = TestRouter::start(config).await;
    router
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
    let mut negative = order_event(2, "o");
    negative["data"]["total_amount"] = json!(-1);
    let (status, body) = router.publish("order.created", &negative).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"][0]["path"], "/data/total_amount");
    let (status, body) = router.publish("order.paid", &order_event(3, "o")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"][0]["path"], "/event_type");
    // Other streams do not require the match.
    let mut payment = order_event(4, "o");
    payment["event_type"] = json!("order.created");
    router.publish_ok("payment.captured", &payment).await;
    assert_eq!(redis.all_envelopes().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_without_a_stream_get_one_named_after_their_domain() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let mut event = order_event(1, "o");
    event["metadata"]["partition_key"] = json!("wh_7");
    let receipt = router.publish_ok("warehouse.bin.moved", &event).await;
    assert_eq!(receipt["stream"], "warehouse");
    let stored = redis.all_envelopes();
    assert_eq!(stored[0].2.key, "wh_7");
    assert!(stored[0].0.starts_with("evr:{warehouse."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_window_answers_duplicates_without_appending() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.streams.push(StreamConfig {
        name: "order".into(),
        keys: vec![KeyRuleConfig {
            topic: "order.>".into(),
            pointer: "/data/order_id".into(),
        }],
        dedup_window: Some("24h".into()),
        ..StreamConfig::default()
    });
    let router = TestRouter::start(config).await;
    let first = router
        .publish_ok("order.created", &order_event(1, "o1"))
        .await;
    assert!(first.get("duplicate").is_none());
    let again = router
        .publish_ok("order.created", &order_event(1, "o1"))
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        again["id"], first["id"],
        "a duplicate answers with the original id"
    );

    // Racing publishes of one new id: exactly one appends.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = router.url("/v1/publish/order.created");
        tasks.push(tokio::spawn(async move {
            let response = client()
                .post(url)
                .json(&order_event(2, "o2"))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("json")
        }));
    }
    let mut fresh = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let receipt = task.await.expect("task");
        if receipt.get("duplicate").is_none() {
            fresh += 1;
        }
        ids.insert(receipt["id"].as_str().expect("id").to_string());
    }
    assert_eq!(fresh, 1, "exactly one racing publish appends");
    assert_eq!(ids.len(), 1, "all racers see the same id");
    // Inside one batch too.
    let batch = json!([order_event(3, "o3"), order_event(3, "o3")]);
    let body = router.publish_ok("order.created", &batch).await;
    assert!(body[0].get("duplicate").is_none());
    assert_eq!(body[1]["duplicate"], true);
    let stored = redis.all_envelopes();
    assert_eq!(stored.len(), 3, "one entry per distinct event id");
}
