//! Spans over OTLP/HTTP: an in-test collector decodes the protobuf evrouter posts and the
//! tests check how one event's spans hang together (publish → Redis write, each delivery
//! attempt, dead-lettering), the context a subscriber receives, bulk requests' links, and
//! that a collector that never answers costs spans (counted), never publishes.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

use support::subscriber::Subscriber;
use support::{
    client, eventually, keyed_event, test_config, Config, RedisServer, RouterApi, TestRouter,
};

/// One span as the collector decoded it.
#[derive(Debug, Clone)]
struct Got {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: Vec<(String, String)>,
    links: Vec<(String, String)>,
    error: bool,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP collector on a free port: it decodes every export, or never answers.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Collector {
    async fn start(stall: bool) -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(
                    move |State(spans): State<Arc<Mutex<Vec<Got>>>>, body: Bytes| async move {
                        if stall {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let request =
                            ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                        let mut got = spans.lock().expect("spans");
                        for resource in request.resource_spans {
                            for scope in resource.scope_spans {
                                got.extend(scope.spans.into_iter().map(|span| {
                                    Got {
                                        trace: hex(&span.trace_id),
                                        id: hex(&span.span_id),
                                        parent: hex(&span.parent_span_id),
                                        name: span.name,
                                        attributes: span
                                            .attributes
                                            .into_iter()
                                            .map(|kv| {
                                                let value = match kv.value.and_then(|v| v.value) {
                                                    Some(AnyValue::StringValue(s)) => s,
                                                    Some(AnyValue::IntValue(n)) => n.to_string(),
                                                    other => format!("{other:?}"),
                                                };
                                                (kv.key, value)
                                            })
                                            .collect(),
                                        links: span
                                            .links
                                            .iter()
                                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                                            .collect(),
                                        error: span.status.is_some_and(|s| s.code == 2),
                                    }
                                }));
                            }
                        }
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, spans }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("spans").clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn traced_config(redis: &RedisServer, collector: &str) -> Config {
    let mut config = test_config(redis);
    config.tracing.otlp_endpoint = Some(collector.to_string());
    config.tracing.flush_interval = "50ms".into();
    config
}

/// The value of an unlabelled sample (or the sum of a family's samples) in `/metrics`.
async fn metric(router: &TestRouter, name: &str) -> u64 {
    let text = client()
        .get(router.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

const THEIRS: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// One event continued from its publisher's trace: the publish span is a child of the
/// publisher's span, the Redis write and every delivery attempt and the dead-lettering
/// are children of the publish span, and each subscriber receives its attempt's span as
/// `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_events_spans_link_publish_write_attempts_and_dead_lettering() {
    let redis = RedisServer::start();
    let collector = Collector::start(false).await;
    let router = TestRouter::start(traced_config(&redis, &collector.url)).await;
    let ok = Subscriber::ok().await;
    let failing = Subscriber::with_rule(Arc::new(|_| (500, String::new()))).await;
    router
        .subscribe("traced-ok", &["order.*"], &ok.url(), json!({}))
        .await;
    router
        .subscribe(
            "traced-dlq",
            &["order.*"],
            &failing.url(),
            json!({"max_attempts": 2, "backoff": {"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": 0.0}}),
        )
        .await;
    let event = keyed_event(1, "ord_traced", 0);
    let response = client()
        .post(router.url("/v1/publish/order.created"))
        .header("traceparent", THEIRS)
        .json(&event)
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 200);
    let event_id = event["event_id"].as_str().expect("id").to_string();

    let spans = eventually(Duration::from_secs(30), async || {
        let spans: Vec<Got> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace == TRACE)
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let attempts = names.iter().filter(|n| **n == "deliver traced-dlq").count();
        let done = names.contains(&"publish order.created")
            && names.iter().any(|n| n.starts_with("XADD "))
            && names.contains(&"deliver traced-ok")
            && attempts == 2
            && names.contains(&"dead-letter traced-dlq");
        if done {
            Ok(spans)
        } else {
            Err(format!("spans so far: {names:?}"))
        }
    })
    .await;
    let named = |name: &str| spans.iter().find(|s| s.name == name).expect(name).clone();
    let publish = named("publish order.created");
    assert_eq!(
        publish.parent, "b7ad6b7169203331",
        "a child of the publisher's span"
    );
    assert_eq!(
        publish.attr("messaging.message.id"),
        Some(event_id.as_str())
    );
    assert_eq!(
        publish.attr("messaging.destination.name"),
        Some("order.created")
    );
    let write = spans
        .iter()
        .find(|s| s.name.starts_with("XADD "))
        .expect("write");
    assert_eq!(
        write.parent, publish.id,
        "the write is a child of the publish"
    );
    assert_eq!(write.attr("db.system.name"), Some("redis"));
    let delivered = named("deliver traced-ok");
    assert_eq!(
        delivered.parent, publish.id,
        "an attempt is a child of the publish"
    );
    assert!(!delivered.error);
    assert_eq!(delivered.attr("http.response.status_code"), Some("200"));
    let failed: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == "deliver traced-dlq")
        .collect();
    assert!(failed.iter().all(|s| s.parent == publish.id && s.error));
    assert_ne!(
        failed[0].id, failed[1].id,
        "each attempt is a span of its own"
    );
    let dead = named("dead-letter traced-dlq");
    assert_eq!(dead.parent, publish.id);
    assert!(dead.error);
    assert_eq!(dead.attr("evrouter.attempts"), Some("2"));

    // The subscriber continues the trace from its attempt's span.
    let received = ok.wait_for(1, Duration::from_secs(10)).await;
    let header = received[0].traceparent.clone().expect("traceparent");
    assert_eq!(header, format!("00-{TRACE}-{}-01", delivered.id));
    let failing_headers: Vec<String> = failing
        .received()
        .iter()
        .filter_map(|r| r.traceparent.clone())
        .collect();
    for attempt in &failed {
        assert!(
            failing_headers.contains(&format!("00-{TRACE}-{}-01", attempt.id)),
            "{failing_headers:?} lacks attempt {}",
            attempt.id
        );
    }
    assert!(metric(&router, "evrouter_spans_exported_total").await >= 6);
}

/// A bulk request's span is linked to every event it carries (each event's publish span),
/// and the request's `traceparent` is that span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_requests_span_links_each_events_publish() {
    let redis = RedisServer::start();
    let collector = Collector::start(false).await;
    let router = TestRouter::start(traced_config(&redis, &collector.url)).await;
    let bulk = Subscriber::ok().await;
    router
        .subscribe(
            "traced-bulk",
            &["order.*"],
            &bulk.url(),
            json!({"mode": "bulk", "bulk": {"max_events": 10, "max_wait_ms": 300}}),
        )
        .await;
    let events: Vec<_> = (0..3)
        .map(|n| keyed_event(n, &format!("ord_bulk_{n}"), 0))
        .collect();
    let response = client()
        .post(router.url("/v1/publish/order.created"))
        .json(&events)
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 200);
    let received = bulk.wait_for(3, Duration::from_secs(30)).await;
    let spans = eventually(Duration::from_secs(30), async || {
        let spans = collector.spans();
        let publishes = spans
            .iter()
            .filter(|s| s.name == "publish order.created")
            .count();
        let delivered = spans
            .iter()
            .filter(|s| s.name == "deliver traced-bulk")
            .count();
        if publishes == 3 && delivered >= 1 {
            Ok(spans)
        } else {
            Err(format!(
                "{publishes} publish spans, {delivered} deliver spans"
            ))
        }
    })
    .await;
    let publishes: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.name == "publish order.created")
        .map(|s| (s.trace.clone(), s.id.clone()))
        .collect();
    // No publisher context: each event starts a trace of its own.
    assert_eq!(
        publishes
            .iter()
            .map(|(t, _)| t)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    let requests: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == "deliver traced-bulk")
        .collect();
    let linked: Vec<&(String, String)> = requests.iter().flat_map(|r| &r.links).collect();
    for publish in &publishes {
        assert!(
            linked.contains(&publish),
            "{publish:?} not linked: {linked:?}"
        );
    }
    for request in &requests {
        let header = format!("00-{}-{}-01", request.trace, request.id);
        assert!(
            received
                .iter()
                .any(|r| r.traceparent.as_deref() == Some(header.as_str())),
            "no bulk request carried {header}"
        );
    }
}

/// A collector that never answers: spans beyond the queue are dropped and counted, while
/// every publish is answered and every event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_costs_spans_never_publishes() {
    let redis = RedisServer::start();
    let collector = Collector::start(true).await;
    let mut config = traced_config(&redis, &collector.url);
    config.tracing.queue = 16;
    config.tracing.max_batch = 8;
    config.tracing.timeout = "30s".into();
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe("untraced-ok", &["order.*"], &subscriber.url(), json!({}))
        .await;
    for batch in 0..4 {
        let events: Vec<_> = (0..25)
            .map(|n| keyed_event(batch * 25 + n, &format!("ord_s_{batch}_{n}"), 0))
            .collect();
        let response = client()
            .post(router.url("/v1/publish/order.created"))
            .json(&events)
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 200, "publish {batch} answered");
    }
    subscriber.wait_for(100, Duration::from_secs(30)).await;
    let dropped = metric(
        &router,
        "evrouter_spans_dropped_total{reason=\"queue_full\"}",
    )
    .await;
    assert!(
        dropped > 0,
        "300 spans through a queue of 16 to a stalled collector"
    );
    assert_eq!(metric(&router, "evrouter_spans_exported_total").await, 0);
    assert!(collector.spans().is_empty());
}

/// A Dapr publish continues the publisher's trace the same way: the stored CloudEvent's
/// `traceparent` (and `traceid`) is the publish span's context, a child of the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dapr_publish_stores_its_publish_spans_context_in_the_cloudevent() {
    let redis = RedisServer::start();
    let collector = Collector::start(false).await;
    let router = TestRouter::start(traced_config(&redis, &collector.url)).await;
    let response = client()
        .post(router.url("/v1.0/publish/pubsub/orders"))
        .header("traceparent", THEIRS)
        .header("content-type", "application/json")
        .body(r#"{"order_id":"ord-9"}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 204);
    let publish = eventually(Duration::from_secs(30), async || {
        collector
            .spans()
            .into_iter()
            .find(|s| s.name == "publish orders")
            .ok_or_else(|| "no publish span yet".to_string())
    })
    .await;
    assert_eq!(publish.trace, TRACE);
    assert_eq!(publish.parent, "b7ad6b7169203331");
    let stored = support::dapr_app::stored_on(&redis, "orders");
    let event: serde_json::Value = serde_json::from_slice(&stored[0].payload).expect("json");
    let expected = format!("00-{TRACE}-{}-01", publish.id);
    assert_eq!(event["traceparent"], expected.as_str());
    assert_eq!(stored[0].traceparent, expected);
}
