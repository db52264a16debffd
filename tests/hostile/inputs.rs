//! Malformed publish bodies: every refusal has the right status and code, nothing
//! rejected reaches Redis, and the process keeps serving.

use std::time::Duration;

use crate::support::{client, order_event, test_config, RedisServer, RouterApi, TestRouter};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post_raw(
    router: &TestRouter,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = client().post(router.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_clear_errors_and_store_nothing() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.server.max_body_bytes = 64 * 1024;
    config.server.max_batch = 10;
    let router = TestRouter::start(config).await;
    let json_type = Some("application/json");
    let deep = "[".repeat(100) + &"]".repeat(100);
    let batch_of_11 = serde_json::to_vec(&(0..11).map(|n| order_event(n, "o")).collect::<Vec<_>>())
        .expect("json");
    // (path, content type, body, expected status, expected code)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/v1/publish/order.created",
            json_type,
            b"{\"event_id\":".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "/v1/publish/order.created",
            json_type,
            b"".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "/v1/publish/order.created",
            json_type,
            b"42".to_vec(),
            400,
            "invalid_event",
        ),
        (
            "/v1/publish/order.created",
            json_type,
            vec![b'"', 0xff, 0xfe, b'"'],
            400,
            "invalid_encoding",
        ),
        (
            "/v1/publish/order.created",
            json_type,
            deep.into_bytes(),
            400,
            "too_deep",
        ),
        (
            "/v1/publish/order.created",
            json_type,
            b"[]".to_vec(),
            400,
            "empty_batch",
        ),
        (
            "/v1/publish/order.created",
            json_type,
            batch_of_11,
            413,
            "batch_too_large",
        ),
        (
            "/v1/publish/order.created",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/publish/Order.Created",
            json_type,
            b"{}".to_vec(),
            400,
            "invalid_topic",
        ),
        (
            "/v1/publish/order..created",
            json_type,
            b"{}".to_vec(),
            400,
            "invalid_topic",
        ),
        (
            "/v1/nothing/here",
            json_type,
            b"{}".to_vec(),
            404,
            "not_found",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let (got, answer) = post_raw(&router, path, content_type, body).await;
        assert_eq!(got, status, "{path} {code}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, answer) = post_raw(
        &router,
        "/v1/publish/order.created",
        json_type,
        b"{\"a\": tru}".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("line 1"),
        "{answer}"
    );
    let response = client()
        .get(router.url("/v1/publish/order.created"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 405);
    assert!(redis.all_envelopes().is_empty());
    // Still serving after all of that.
    router
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_declared_or_chunked() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.server.max_body_bytes = 4096;
    let router = TestRouter::start(config).await;
    let mut big = order_event(1, "o");
    big["data"]["notes"] = json!("x".repeat(5000));
    let (status, answer) = post_raw(
        &router,
        "/v1/publish/order.created",
        Some("application/json"),
        serde_json::to_vec(&big).expect("json"),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(answer["error"]["code"], "body_too_large");

    // A chunked body (no Content-Length) is cut off once it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let stream = futures_stream(chunks);
    let response = client()
        .post(router.url("/v1/publish/order.created"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 413);
    assert!(redis.all_envelopes().is_empty());
    router
        .publish_ok("order.created", &order_event(2, "o"))
        .await;
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_after_the_header_timeout() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.server.header_read_timeout = "300ms".into();
    let router = TestRouter::start(config).await;
    let address = router.base.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut partial = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    partial
        .write_all(b"POST /v1/publish/order.created HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    for stream in [&mut silent, &mut partial] {
        let mut buffer = Vec::new();
        // The server closes the connection; a generous bound keeps a broken build from hanging.
        let read =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "connection was not closed by the server");
    }
    router
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
}

/// Mutates a valid event at random (seeded, so a failure repeats): no input may crash the
/// process, earn a 5xx, or be stored without passing validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_mutations_never_crash_or_store_invalid_events() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let valid = serde_json::to_vec(&order_event(1, "ord_1")).expect("json");
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let http = client();
    let mut accepted = 0;
    for _ in 0..400 {
        let mut body = valid.clone();
        const NOISE: &[u8] = b"{}[]\":,\\ 0e-";
        for _ in 0..rng.usize(1..6) {
            if body.is_empty() {
                break;
            }
            let at = rng.usize(..body.len());
            match rng.u8(..4) {
                0 => body[at] = rng.u8(..),
                1 => {
                    body.remove(at);
                }
                2 => body.insert(at, NOISE[rng.usize(..NOISE.len())]),
                _ => body.truncate(at),
            }
        }
        let response = http
            .post(router.url("/v1/publish/order.created"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("evrouter answers");
        let status = response.status().as_u16();
        assert!(
            matches!(status, 200 | 400),
            "status {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
        if status == 200 {
            accepted += 1;
            let value: Value = serde_json::from_slice(&body).expect("accepted bodies are JSON");
            assert!(value["metadata"]["correlation_id"].is_string());
        }
    }
    assert_eq!(redis.all_envelopes().len(), accepted);
    router
        .publish_ok("order.created", &order_event(2, "o"))
        .await;
}
