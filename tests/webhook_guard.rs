//! Safe webhooks against a real evrouter and real HTTP servers: endpoints on internal
//! addresses (loopback, the cloud metadata address, a name resolving to loopback, IPv6
//! loopback and IPv4-mapped loopback) are refused when a subscription is created, a name
//! that resolves to an internal address is refused again at connect time, and a
//! subscriber's redirect is never followed.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use serde_json::{json, Value};
use support::subscriber::Subscriber;
use support::{
    dlq_entries, eventually, fast_retries, order_event, test_config, RedisServer, RouterApi,
    TestRouter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_are_refused_at_creation() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.webhooks.allow.clear();
    let router = TestRouter::start(config).await;
    for endpoint in [
        "http://127.0.0.1:9000/events",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9000/events",
        "http://[::1]:9000/events",
        "http://[::ffff:127.0.0.1]:9000/events",
        "http://10.0.0.8/events",
    ] {
        let (status, body) = router
            .post(
                "/v1/subscriptions",
                "application/json",
                json!({"name": "probe", "topics": ["order.*"], "endpoints": [endpoint]})
                    .to_string(),
            )
            .await;
        assert_eq!(status, 400, "{endpoint}: {body}");
        assert_eq!(body["error"]["code"], "endpoint_refused", "{body}");
        assert_eq!(
            body["error"]["details"][0]["path"], "/endpoints/0",
            "{body}"
        );
    }
    let listed: Value = router.get_json("/v1/subscriptions").await;
    assert_eq!(listed, json!([]), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_inside_is_refused_at_connect_time() {
    // A subscription from the config file is not checked at creation: the connection is.
    let redis = RedisServer::start();
    let subscriber = Subscriber::ok().await;
    let mut config = test_config(&redis);
    config.webhooks.allow.clear();
    let port = subscriber.addr.port();
    config.subscriptions = vec![serde_json::from_value(json!({
        "name": "rebound",
        "topics": ["order.created"],
        "endpoints": [format!("http://localhost:{port}/events")],
        "start": "earliest",
        "max_attempts": 2,
        "backoff": fast_retries(),
    }))
    .expect("spec")];
    let router = TestRouter::start(config).await;
    router
        .publish_ok("order.created", &order_event(1, "ord_1"))
        .await;
    let dead = eventually(Duration::from_secs(10), async || {
        let dead = dlq_entries(&redis, "rebound");
        if dead.is_empty() {
            Err("no dead letter yet".to_string())
        } else {
            Ok(dead)
        }
    })
    .await;
    assert_eq!(
        subscriber.count(),
        0,
        "nothing reached the loopback subscriber"
    );
    let error = &dead[0]["last_error"];
    assert!(error.contains("refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let redis = RedisServer::start();
    let target = Subscriber::ok().await;
    // A server that answers every request with a redirect to the real subscriber.
    let location = target.url();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let app = axum::Router::new().fallback(move || {
        let (location, counter) = (location.clone(), counter.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (StatusCode::FOUND, [(header::LOCATION, location)])
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redirecting = format!("http://{}/events", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let router = TestRouter::start(test_config(&redis)).await;
    router
        .subscribe(
            "redirected",
            &["order.created"],
            &redirecting,
            json!({"max_attempts": 2, "backoff": fast_retries()}),
        )
        .await;
    router
        .publish_ok("order.created", &order_event(1, "ord_1"))
        .await;
    let dead = eventually(Duration::from_secs(10), async || {
        let dead = dlq_entries(&redis, "redirected");
        if dead.is_empty() {
            Err("no dead letter yet".to_string())
        } else {
            Ok(dead)
        }
    })
    .await;
    assert_eq!(dead[0]["last_status"], "302");
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    assert_eq!(target.count(), 0, "the redirect's target got nothing");
}
