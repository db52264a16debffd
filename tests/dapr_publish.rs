//! Publishing through the Dapr API against a real Redis: the CloudEvents stored for each
//! kind of publish (JSON, CloudEvent, text, bytes, raw payloads, TTLs), Dapr's error codes,
//! the metadata and health endpoints, and bulk publishes with their failed entries.

mod support;

use serde_json::{json, Value};
use support::dapr_app::{dapr_publish, dapr_publish_ok, stored_on};
use support::{
    order_event, test_config, DaprPubsubConfig, PayloadFormat, RedisServer, RouterApi, TestRouter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stores_cloudevents_as_dapr_makes_them() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;

    // JSON data is wrapped, with the charset parameter accepted.
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders?metadata.partitionKey=ord-7",
        "application/json; charset=utf-8",
        r#"{"order_id":"ord-7","total":12.5}"#,
    )
    .await;
    // A CloudEvent keeps its attributes and gets the missing ones.
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders",
        "application/cloudevents+json",
        r#"{"specversion":"1.0","id":"ce-1","source":"shop","type":"order.placed","data":{"n":1}}"#,
    )
    .await;
    // Text and bytes.
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders",
        "text/plain",
        "hello",
    )
    .await;
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders",
        "application/octet-stream",
        vec![0u8, 1, 2, 255],
    )
    .await;
    // Overrides from the query; a topic with a `/`; a chunked body.
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![Ok(b"{\"a\":"), Ok(b"1}")];
    let stream = tokio_stream::iter(chunks);
    let (status, body) = dapr_publish(
        &router,
        "/v1.0/publish/pubsub/orders/created?metadata.cloudevent.id=fixed-id&metadata.cloudevent.type=order.created&metadata.cloudevent.source=checkout",
        "application/json",
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    assert_eq!(status, 204, "{body}");

    let orders = stored_on(&redis, "orders");
    assert_eq!(orders.len(), 4);
    let events: Vec<Value> = orders
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).expect("json"))
        .collect();
    assert!(orders.iter().all(|e| e.format == PayloadFormat::CloudEvent));
    let json_event = &events[0];
    assert_eq!(json_event["data"]["order_id"], "ord-7");
    assert_eq!(json_event["type"], "com.dapr.event.sent");
    assert_eq!(json_event["datacontenttype"], "application/json");
    assert_eq!(json_event["specversion"], "1.0");
    assert_eq!(json_event["topic"], "orders");
    assert_eq!(json_event["pubsubname"], "pubsub");
    assert!(json_event["traceparent"]
        .as_str()
        .is_some_and(|t| t.starts_with("00-")));
    assert_eq!(json_event["traceid"], json_event["traceparent"]);
    assert!(json_event["time"].is_string());
    assert_eq!(orders[0].key, "ord-7", "partitionKey is the key");
    assert_eq!(events[1]["id"], "ce-1");
    assert_eq!(events[1]["source"], "shop");
    assert_eq!(events[1]["type"], "order.placed");
    assert_eq!(events[1]["topic"], "orders");
    assert_eq!(orders[1].event_id, "ce-1");
    assert_eq!(events[2]["data"], "hello");
    assert_eq!(events[2]["datacontenttype"], "text/plain");
    assert_eq!(events[3]["data_base64"], "AAEC/w==");
    assert_eq!(events[3]["datacontenttype"], "application/octet-stream");

    let created = stored_on(&redis, "orders.created");
    assert_eq!(created.len(), 1, "orders/created maps to orders.created");
    let event: Value = serde_json::from_slice(&created[0].payload).expect("json");
    assert_eq!(event["id"], "fixed-id");
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["source"], "checkout");
    assert_eq!(event["topic"], "orders/created");
    assert_eq!(event["data"]["a"], 1);

    // Raw payloads are stored as sent; a TTL becomes an expiry.
    dapr_publish_ok(
        &router,
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true&metadata.ttlInSeconds=60",
        "application/octet-stream",
        vec![9u8, 8, 7],
    )
    .await;
    let raw = stored_on(&redis, "raw");
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].format, PayloadFormat::Raw);
    assert_eq!(raw[0].payload, vec![9u8, 8, 7]);
    assert_eq!(
        raw[0].content_type.as_deref(),
        Some("application/octet-stream")
    );
    let ttl = raw[0].expires_us.expect("expiry") - raw[0].received_us;
    assert_eq!(ttl, 60_000_000);

    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_dapr_codes_and_store_nothing() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.dapr.pubsubs.push(DaprPubsubConfig {
        name: "billing".into(),
        topic_prefix: "billing.".into(),
        allowed_topics: vec!["invoices".into()],
    });
    config.server.max_body_bytes = 4096;
    let router = TestRouter::start(config).await;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1.0/publish/nope/orders",
            "application/json",
            b"{}".to_vec(),
            404,
            "ERR_PUBSUB_NOT_FOUND",
        ),
        (
            "/v1.0/publish/pubsub/",
            "application/json",
            b"{}".to_vec(),
            404,
            "ERR_TOPIC_NAME_EMPTY",
        ),
        (
            "/v1.0/publish/billing/payments",
            "application/json",
            b"{}".to_vec(),
            403,
            "ERR_PUBSUB_FORBIDDEN",
        ),
        (
            "/v1.0/publish/pubsub/orders",
            "application/cloudevents+json",
            b"[1,2]".to_vec(),
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
        ),
        (
            "/v1.0/publish/pubsub/orders",
            "application/cloudevents+json",
            b"{\"id\":".to_vec(),
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
        ),
        (
            "/v1.0/publish/pubsub/orders",
            "application/cloudevents+json",
            br#"{"specversion":"0.3"}"#.to_vec(),
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
        ),
        (
            "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=soon",
            "application/json",
            b"{}".to_vec(),
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=0",
            "application/json",
            b"{}".to_vec(),
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=99999999999999",
            "application/json",
            b"{}".to_vec(),
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/pubsub/orders?metadata.rawPayload=perhaps",
            "application/json",
            b"{}".to_vec(),
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/pubsub/bad%20topic",
            "application/json",
            b"{}".to_vec(),
            400,
            "ERR_PUBSUB_TOPIC_INVALID",
        ),
        (
            "/v1.0/publish/pubsub/orders",
            "application/json",
            vec![b' '; 5000],
            413,
            "ERR_PUBSUB_REQUEST_BODY",
        ),
        (
            "/v1.0/publish/pubsub/orders",
            "application/json",
            ("[".repeat(100) + &"]".repeat(100)).into_bytes(),
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let (got, answer) = dapr_publish(&router, path, content_type, body).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert_eq!(answer["errorCode"], code, "{path}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(redis.all_envelopes().is_empty(), "nothing stored");

    // The prefix of a pubsub keeps its topics apart.
    dapr_publish_ok(
        &router,
        "/v1.0/publish/billing/invoices",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(stored_on(&redis, "billing.invoices").len(), 1);

    // What the SDKs ask before anything else.
    let metadata = router.get_json("/v1.0/metadata").await;
    let names: Vec<&str> = metadata["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["billing", "pubsub"]);
    assert_eq!(
        router
            .status_of(reqwest::Method::GET, "/v1.0/healthz")
            .await,
        204
    );

    // Redis gone: the store failure is Dapr's 500.
    let mut redis = redis;
    redis.kill();
    let (status, answer) = dapr_publish(
        &router,
        "/v1.0/publish/pubsub/orders",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    let (status, answer) = dapr_publish(
        &router,
        "/v1.0-alpha1/publish/bulk/pubsub/orders",
        "application/json",
        json!([{"entryId": "a", "event": {"n": 1}, "contentType": "application/json"}]).to_string(),
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["failedEntries"][0]["entryId"], "a");
    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_publish_reports_failed_entries() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let body = json!([
        {"entryId": "a", "event": {"n": 1}, "contentType": "application/json"},
        {"entryID": "b", "event": "plain text", "contentType": "text/plain"},
        {"entryId": "c", "event": {"specversion":"1.0","id":"ce-c","source":"s","type":"t","data":{}}, "contentType": "application/cloudevents+json"},
        {"entryId": "d", "event": {"n": 4}, "contentType": "application/json", "metadata": {"partitionKey": "k-4"}},
    ]);
    for path in [
        "/v1.0-alpha1/publish/bulk/pubsub/orders",
        "/v1.0/publish/bulk/pubsub/orders",
    ] {
        let (status, answer) =
            dapr_publish(&router, path, "application/json", body.to_string()).await;
        assert_eq!(status, 204, "{answer}");
    }
    let stored = stored_on(&redis, "orders");
    assert_eq!(stored.len(), 8);
    assert!(stored.iter().any(|e| e.event_id == "ce-c"));
    assert!(stored.iter().any(|e| e.key == "k-4"));

    // A bad entry fails alone; the others are stored.
    let mixed = json!([
        {"entryId": "ok", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "bad", "event": [1], "contentType": "application/cloudevents+json"},
        {"entryId": "bad-meta", "event": {"n": 3}, "contentType": "application/json", "metadata": {"ttlInSeconds": "never"}},
        {"entryId": "bytes", "event": "AAEC/w==", "contentType": "application/octet-stream", "metadata": {"rawPayload": "true"}},
    ]);
    let (status, answer) = dapr_publish(
        &router,
        "/v1.0-alpha1/publish/bulk/pubsub/mixed",
        "application/json",
        mixed.to_string(),
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    let failed = answer["failedEntries"].as_array().expect("failed");
    let failed_ids: Vec<&str> = failed
        .iter()
        .filter_map(|f| f["entryId"].as_str())
        .collect();
    assert_eq!(failed_ids, vec!["bad", "bad-meta"]);
    assert_eq!(failed[0]["entryID"], "bad");
    let mixed = stored_on(&redis, "mixed");
    assert_eq!(mixed.len(), 2);
    // Bytes arrive base64-encoded in a bulk body and are stored decoded.
    assert!(mixed
        .iter()
        .any(|e| e.format == PayloadFormat::Raw && e.payload == vec![0u8, 1, 2, 255]));

    // A body that is not a list, or an entry without an id, is refused whole.
    for bad in [json!({"entryId": "x"}), json!([{"event": {}}])] {
        let (status, answer) = dapr_publish(
            &router,
            "/v1.0-alpha1/publish/bulk/pubsub/refused",
            "application/json",
            bad.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["errorCode"], "ERR_PUBSUB_EVENTS_SER");
    }
    assert!(stored_on(&redis, "refused").is_empty());

    // Entries are read in place: an escaped entry id is still one id. Each entry's event
    // is measured: an event at the limit (64 levels) is stored, one level more refuses the
    // whole body.
    let nested = |levels: usize| -> Value {
        let text = "[".repeat(levels) + &"]".repeat(levels);
        serde_json::from_str(&text).expect("nested")
    };
    let at_limit = json!([
        {"entryId": "q\"1", "event": nested(64), "contentType": "application/json"},
        {"entryId": "q\"2", "event": nested(1), "contentType": "application/json"},
    ]);
    let too_deep = json!([
        {"entryId": "q\"3", "event": nested(1), "contentType": "application/json"},
        {"entryId": "q\"4", "event": nested(65), "contentType": "application/json"},
    ]);
    // The same id, once plain and once escaped, is used twice.
    let twice = r#"[{"entryId": "q\"5", "event": {}}, {"entryId": "q\u00225", "event": {}}]"#;
    for (body, wanted, why) in [
        (at_limit.to_string(), 204, None),
        (
            too_deep.to_string(),
            400,
            Some("nests deeper than 64 levels"),
        ),
        (twice.to_string(), 400, Some("used twice")),
    ] {
        let (status, answer) = dapr_publish(
            &router,
            "/v1.0-alpha1/publish/bulk/pubsub/deep",
            "application/json",
            body,
        )
        .await;
        assert_eq!(status, wanted, "{answer}");
        if let Some(why) = why {
            assert_eq!(answer["errorCode"], "ERR_PUBSUB_EVENTS_SER");
            assert!(
                answer["message"].as_str().is_some_and(|m| m.contains(why)),
                "{answer}"
            );
        }
        // Only the entries at the limit are stored; a refused body stores nothing.
        assert_eq!(stored_on(&redis, "deep").len(), 2);
    }
    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_events_are_validated_on_the_dapr_api_too() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let path = "/v1.0/publish/pubsub/order.created";
    // A valid platform event, as data and as a raw payload: stored.
    dapr_publish_ok(
        &router,
        path,
        "application/json",
        order_event(1, "ord_1").to_string(),
    )
    .await;
    let raw = format!("{path}?metadata.rawPayload=true");
    dapr_publish_ok(
        &router,
        &raw,
        "application/json",
        order_event(2, "ord_2").to_string(),
    )
    .await;
    // The same with a bad event_id and no metadata: refused with the paths at fault.
    let mut bad = order_event(3, "ord_3");
    bad["event_id"] = json!("order-3");
    bad["metadata"] = json!({});
    for path in [path, raw.as_str()] {
        let (status, answer) =
            dapr_publish(&router, path, "application/json", bad.to_string()).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(
            answer["errorCode"], "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "{answer}"
        );
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("/event_id") && message.contains("/metadata/service"),
            "{message}"
        );
    }
    // A body that is not a platform event (no event_type) is stored as it is.
    dapr_publish_ok(
        &router,
        path,
        "application/json",
        json!({"order_id": "ord_4"}).to_string(),
    )
    .await;
    assert_eq!(stored_on(&redis, "order.created").len(), 3);
}
