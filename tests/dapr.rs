//! The Dapr API against a real Redis and a real HTTP app: the CloudEvents stored for each
//! kind of publish, raw payloads, TTL expiry, bulk results, Dapr's error codes, apps'
//! `/dapr/subscribe` read into subscriptions (also when the app starts late), routing
//! rules, RETRY/DROP answers, bulk deliveries and dead-letter topics.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use evrouter::config::{DaprAppConfig, DaprPubsubConfig};
use evrouter::model::envelope::PayloadFormat;
use serde_json::{json, Value};
use support::{client, free_port, get_json, test_config, RedisServer, TestRouter};

/// One request a Dapr app received.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    content_type: String,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A Dapr app: serves `/dapr/subscribe` and records every delivery; `/retry-once` answers
/// RETRY the first time for each event id, `/drop` DROP, `/always-retry` RETRY, `/bulk`
/// answers SUCCESS per entry except entries whose event's `data.n` is odd (RETRY the first
/// time) or 4 (left out of the statuses the first time).
#[derive(Clone, Default)]
struct App {
    subscriptions: Arc<Mutex<Value>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl App {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }

    fn on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    async fn wait(&self, within: Duration, done: impl Fn(&[Hit]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.hits()) {
            if tokio::time::Instant::now() > deadline {
                let mut by_path: std::collections::BTreeMap<String, usize> = Default::default();
                for hit in self.hits() {
                    *by_path.entry(hit.path.clone()).or_default() += 1;
                    if hit.path == "/bulk" {
                        eprintln!("bulk request: {}", hit.json());
                    }
                }
                panic!("app did not get what was expected; requests by path: {by_path:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn first_time(&self, id: &str) -> bool {
        let mut seen = self.seen.lock().expect("seen");
        let n = seen.entry(id.to_string()).or_insert(0);
        *n += 1;
        *n == 1
    }

    async fn serve_on(self, listener: tokio::net::TcpListener) {
        let router = axum::Router::new()
            .route("/dapr/subscribe", axum::routing::get(subscribe_list))
            .fallback(deliver)
            .with_state(self);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
}

/// The app's list; `null` stands for an app that does not serve the path (404).
async fn subscribe_list(State(app): State<App>) -> Response {
    let list = app.subscriptions.lock().expect("subs").clone();
    if list.is_null() {
        return StatusCode::NOT_FOUND.into_response();
    }
    axum::Json(list).into_response()
}

async fn deliver(State(app): State<App>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let hit = Hit {
        path: uri.path().to_string(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
    };
    app.hits.lock().expect("hits").push(hit.clone());
    let event = hit.json();
    let id = event["id"].as_str().unwrap_or_default().to_string();
    let status = |s: &str| axum::Json(json!({ "status": s })).into_response();
    match hit.path.as_str() {
        "/retry-once" if app.first_time(&id) => status("RETRY"),
        "/drop" => status("DROP"),
        "/always-retry" => status("RETRY"),
        "/not-here" => StatusCode::NOT_FOUND.into_response(),
        "/bulk" => {
            let statuses: Vec<Value> = event["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|entry| {
                    let entry_id = entry["entryId"].as_str().unwrap_or_default();
                    let n = entry["event"]["data"]["n"].as_u64().unwrap_or(0);
                    let first = (n % 2 == 1 || n == 4) && app.first_time(entry_id);
                    let s = match (first, n) {
                        (true, 4) => return None,
                        (true, _) => "RETRY",
                        (false, _) => "SUCCESS",
                    };
                    Some(json!({ "entryId": entry_id, "status": s }))
                })
                .collect();
            axum::Json(json!({ "statuses": statuses })).into_response()
        }
        _ => status("SUCCESS"),
    }
}

async fn dapr_publish(
    router: &TestRouter,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    router.post(path, content_type, body).await
}

/// Publishes through the Dapr API and asserts it was stored (204).
async fn publish_ok(
    router: &TestRouter,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) {
    let (status, answer) = dapr_publish(router, path, content_type, body).await;
    assert_eq!(status, 204, "{path}: {answer}");
}

fn stored_on(redis: &RedisServer, topic: &str) -> Vec<evrouter::model::envelope::Envelope> {
    let mut envelopes: Vec<_> = redis
        .all_envelopes()
        .into_iter()
        .map(|(_, _, e)| e)
        .filter(|e| e.topic == topic)
        .collect();
    envelopes.sort_by_key(|e| e.received_us);
    envelopes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stores_cloudevents_as_dapr_makes_them() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;

    // JSON data is wrapped, with the charset parameter accepted.
    publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders?metadata.partitionKey=ord-7",
        "application/json; charset=utf-8",
        r#"{"order_id":"ord-7","total":12.5}"#,
    )
    .await;
    // A CloudEvent keeps its attributes and gets the missing ones.
    publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders",
        "application/cloudevents+json",
        r#"{"specversion":"1.0","id":"ce-1","source":"shop","type":"order.placed","data":{"n":1}}"#,
    )
    .await;
    // Text and bytes.
    publish_ok(
        &router,
        "/v1.0/publish/pubsub/orders",
        "text/plain",
        "hello",
    )
    .await;
    publish_ok(
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
    publish_ok(
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
    publish_ok(
        &router,
        "/v1.0/publish/billing/invoices",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(stored_on(&redis, "billing.invoices").len(), 1);

    // What the SDKs ask before anything else.
    let metadata = get_json(router.url("/v1.0/metadata")).await;
    let names: Vec<&str> = metadata["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["billing", "pubsub"]);
    let health = client()
        .get(router.url("/v1.0/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 204);

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
    router.stop().await.expect("stop");
}

fn app_config(id: &str, port: u16) -> DaprAppConfig {
    DaprAppConfig {
        id: id.into(),
        url: format!("http://127.0.0.1:{port}"),
        max_attempts: 3,
        retry_initial_ms: 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_subscriptions_route_retry_drop_and_dead_letter() {
    let redis = RedisServer::start();
    let port = free_port();
    let app = App::default();
    *app.subscriptions.lock().expect("subs") = json!([
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
    ]);
    let mut config = test_config(&redis);
    config.dapr.apps = vec![app_config("shop", port)];
    config.dapr.refresh_interval = "1s".into();
    let router = TestRouter::start(config).await;
    // The app comes up after evrouter: it is tried again until it answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind app");
    app.clone().serve_on(listener).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let subs = get_json(router.url("/v1/subscriptions")).await;
        if subs.as_array().is_some_and(|s| s.len() == 8) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions not read: {subs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let publish = |topic: &'static str, body: Value| {
        let url = router.url(&format!("/v1.0/publish/pubsub/{topic}"));
        async move {
            let response = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("publish");
            assert_eq!(response.status().as_u16(), 204);
        }
    };
    // Routing rules: first match wins, else the default.
    let express = r#"{"specversion":"1.0","id":"x1","source":"s","type":"order.express","data":{"amount":500}}"#;
    publish_ok(
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
    publish_ok(
        &router,
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
        "application/octet-stream",
        vec![1u8, 2, 3],
    )
    .await;
    publish_ok(
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
    let stats = get_json(router.url("/v1/stats")).await;
    let subs = stats["subscriptions"].as_object().expect("subs");
    let total =
        |field: &str| -> u64 { subs.values().map(|s| s[field].as_u64().unwrap_or(0)).sum() };
    assert_eq!(total("unrouted"), 1);
    assert_eq!(total("dropped"), 1);
    assert_eq!(total("dead_letter_topic"), 1);
    assert_eq!(total("dead_lettered"), 1);

    // A replayed dead letter goes to the app's route as a CloudEvent again.
    let subs = get_json(router.url("/v1/subscriptions")).await;
    let doomed = subs
        .as_array()
        .expect("subs")
        .iter()
        .find(|s| s["dapr"]["topic"] == "doomed")
        .and_then(|s| s["name"].as_str())
        .expect("doomed subscription")
        .to_string();
    let replay = client()
        .post(router.url(&format!("/v1/dlq/{doomed}/replay")))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status().as_u16(), 200);
    let retried = app.on("/always-retry");
    assert_eq!(retried.len(), 4);
    assert_eq!(retried[3].content_type, "application/cloudevents+json");
    assert_eq!(retried[3].json()["data"]["n"], 1);

    // An app that answers 404 has not said what it no longer wants: nothing is removed.
    let listed = std::mem::replace(&mut *app.subscriptions.lock().expect("subs"), Value::Null);
    let refreshed = client()
        .post(router.url("/v1/dapr/apps/shop/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status().as_u16(), 200);
    let subs = get_json(router.url("/v1/subscriptions")).await;
    assert_eq!(subs.as_array().map(Vec::len), Some(8), "{subs}");
    *app.subscriptions.lock().expect("subs") = listed;

    // An app that stops listing a subscription loses it.
    app.subscriptions
        .lock()
        .expect("subs")
        .as_array_mut()
        .expect("list")
        .truncate(2);
    // It takes two answers in a row that leave a subscription out.
    for _ in 0..2 {
        let refreshed = client()
            .post(router.url("/v1/dapr/apps/shop/refresh"))
            .send()
            .await
            .expect("refresh");
        assert_eq!(refreshed.status().as_u16(), 200);
    }
    let subs = get_json(router.url("/v1/subscriptions")).await;
    assert_eq!(subs.as_array().map(Vec::len), Some(2), "{subs}");
    let unknown = client()
        .post(router.url("/v1/dapr/apps/nope/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(unknown.status().as_u16(), 404);
    router.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_events_are_not_delivered() {
    let redis = RedisServer::start();
    let port = free_port();
    let app = App::default();
    *app.subscriptions.lock().expect("subs") = json!([
        {"pubsubname": "pubsub", "topic": "fleeting", "route": "/always-retry"}
    ]);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind app");
    app.clone().serve_on(listener).await;
    let mut config = test_config(&redis);
    let mut shop = app_config("shop", port);
    shop.max_attempts = 50;
    shop.retry_initial_ms = 400;
    config.dapr.apps = vec![shop];
    let router = TestRouter::start(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get_json(router.url("/v1/subscriptions"))
        .await
        .as_array()
        .is_none_or(|s| s.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "no subscription");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_ok(
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let sub = loop {
        let stats = get_json(router.url("/v1/stats")).await;
        let sub = stats["subscriptions"]
            .as_object()
            .and_then(|s| s.values().next().cloned())
            .expect("stats");
        if sub["expired"] == 1 || tokio::time::Instant::now() > deadline {
            break sub;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
    let app = App::default();
    // The app lists nothing itself.
    *app.subscriptions.lock().expect("subs") = json!([]);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind app");
    app.clone().serve_on(listener).await;
    let mut config = test_config(&redis);
    config.dapr.apps = vec![app_config("shop", port)];
    config.dapr.subscriptions_dir = Some(dir.path().to_path_buf());
    let router = TestRouter::start(config).await;
    let refreshed = client()
        .post(router.url("/v1/dapr/apps/shop/refresh"))
        .send()
        .await
        .expect("refresh")
        .json::<Value>()
        .await
        .expect("json");
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
        publish_ok(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_subscribers_get_json_for_every_dapr_publish() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let port = free_port();
    let hook = App::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    hook.clone().serve_on(listener).await;
    support::subscribe(
        &router,
        json!({"name": "native", "topics": ["mixed.>"],
               "endpoints": [format!("http://127.0.0.1:{port}/hook")], "mode": "bulk"}),
    )
    .await;
    publish_ok(
        &router,
        "/v1.0/publish/pubsub/mixed/raw?metadata.rawPayload=true",
        "application/octet-stream",
        vec![0u8, 159, 146, 150],
    )
    .await;
    publish_ok(
        &router,
        "/v1.0/publish/pubsub/mixed/json",
        "application/json",
        r#"{"n":2}"#,
    )
    .await;
    let events = || -> Vec<Value> {
        hook.on("/hook")
            .iter()
            .flat_map(|h| h.json().as_array().cloned().unwrap_or_default())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {:?}",
            hook.hits()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = events();
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
