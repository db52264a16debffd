//! Signed deliveries: a webhook subscription gets its signing secret once, at creation;
//! every delivery carries the Standard Webhooks headers, verified here by an independent
//! implementation (Python's `hmac`); after a rotation, deliveries are signed with the new
//! and the old secret until the old one expires.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use support::{eventually, order_event, test_config, RedisServer, RouterApi, TestRouter};

/// What the subscriber got: the headers and the body of each request.
type Log = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn recording_subscriber() -> (String, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let kept = log.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let kept = kept.clone();
        async move {
            kept.lock().expect("log").push((headers, body));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/events", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

/// Verifies a Standard Webhooks signature with Python's standard library.
fn python_verifies(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("body");
    std::fs::write(&path, body).expect("body");
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, timestamp, body_path, signatures = sys.argv[1:6]
key = base64.b64decode(secret.split("_", 1)[1])
body = open(body_path, "rb").read()
mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
expected = base64.b64encode(mac.digest()).decode()
ok = any(s.split(",", 1)[1] == expected for s in signatures.split(" ") if s.startswith("v1,"))
sys.exit(0 if ok else 1)
"#;
    std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(secret)
        .arg(header("webhook-id"))
        .arg(header("webhook-timestamp"))
        .arg(&path)
        .arg(header("webhook-signature"))
        .status()
        .expect("python3")
        .success()
}

async fn delivered(log: &Log, n: usize) -> Vec<(HeaderMap, Bytes)> {
    eventually(Duration::from_secs(10), async || {
        let got = log.lock().expect("log").clone();
        if got.len() >= n {
            Ok(got)
        } else {
            Err(format!("{} of {n} requests", got.len()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_rotation_overlaps() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let (url, log) = recording_subscriber().await;
    let (status, created) = router
        .post(
            "/v1/subscriptions",
            "application/json",
            json!({"name": "signed", "topics": ["order.created"], "endpoints": [url]}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["signing_secret"]
        .as_str()
        .expect("secret at creation")
        .to_string();
    assert!(secret.starts_with("whsec_"));
    let shown: Value = router.get_json("/v1/subscriptions/signed").await;
    assert!(
        shown.get("signing_secret").is_none(),
        "shown once only: {shown}"
    );

    router
        .publish_ok("order.created", &order_event(1, "ord_1"))
        .await;
    let got = delivered(&log, 1).await;
    let (headers, body) = &got[0];
    assert_eq!(headers["webhook-id"], "evt_order_1");
    assert!(python_verifies(&secret, headers, body), "{headers:?}");
    assert!(!python_verifies(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        headers,
        body
    ));

    let (status, rotated) = router.post_empty("/v1/subscriptions/signed/secret").await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["signing_secret"]
        .as_str()
        .expect("new secret")
        .to_string();
    assert_ne!(new_secret, secret);
    // The worker restarts with the new secrets; publish until a delivery carries both.
    let mut n = 2;
    let got = eventually(Duration::from_secs(15), async || {
        router
            .publish_ok("order.created", &order_event(n, "ord_1"))
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = log.lock().expect("log").clone();
        match got.last() {
            Some((headers, body)) if python_verifies(&new_secret, headers, body) => {
                Ok((headers.clone(), body.clone()))
            }
            _ => Err("no delivery signed with the new secret yet".to_string()),
        }
    })
    .await;
    let (headers, body) = got;
    assert!(
        python_verifies(&secret, &headers, &body),
        "the old secret still signs"
    );
    let signatures = headers["webhook-signature"].to_str().expect("header");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
}
