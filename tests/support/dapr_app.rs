//! A fake Dapr app for the Dapr API tests: serves `/dapr/subscribe` and `/health` and
//! records every delivery, answering by path; and what those tests share: Dapr publishes, app configs,
//! the envelopes stored for a topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{eventually, DaprAppConfig, Envelope, RedisServer, RouterApi};

/// One request a Dapr app received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub content_type: String,
    pub body: Bytes,
    /// The `dapr-api-token` header, if any.
    pub api_token: Option<String>,
}

impl Hit {
    /// The body as JSON (null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A Dapr app: serves `/dapr/subscribe` and records every delivery; `/retry-once` answers
/// RETRY the first time for each event id, `/drop` DROP, `/always-retry` RETRY,
/// `/not-here` 404, `/bulk` answers SUCCESS per entry except entries whose event's
/// `data.n` is odd (RETRY the first time) or 4 (left out of the statuses the first time);
/// any other path SUCCESS.
#[derive(Clone, Default)]
pub struct DaprApp {
    /// What `/dapr/subscribe` lists; `null` stands for an app that does not serve the path
    /// (404).
    pub subscriptions: Arc<Mutex<Value>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    /// The `dapr-api-token` of each `/dapr/subscribe` request.
    pub subscribe_tokens: Arc<Mutex<Vec<Option<String>>>>,
    /// What `GET /health` answers: 200 when set, else 503.
    pub healthy: Arc<AtomicBool>,
    /// `GET /health` requests received.
    pub probes: Arc<AtomicUsize>,
}

impl DaprApp {
    /// An app listing `subscriptions` at `/dapr/subscribe` (not listening yet).
    pub fn listing(subscriptions: Value) -> Self {
        let app = Self::default();
        app.set_subscriptions(subscriptions);
        app
    }

    /// Replaces what `/dapr/subscribe` lists; returns what it listed before.
    pub fn set_subscriptions(&self, subscriptions: Value) -> Value {
        std::mem::replace(
            &mut *self.subscriptions.lock().expect("subs"),
            subscriptions,
        )
    }

    /// Starts serving on `port` of the loopback interface.
    pub async fn listen(&self, port: u16) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind app");
        let router = axum::Router::new()
            .route("/dapr/subscribe", axum::routing::get(subscribe_list))
            .route("/health", axum::routing::get(health))
            .fallback(deliver)
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }

    /// Every request received, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }

    /// The requests received on `path`.
    pub fn on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// Waits until `done` holds for the requests received (or panics after `within`,
    /// listing requests by path and the bodies of bulk requests).
    pub async fn wait(&self, within: Duration, done: impl Fn(&[Hit]) -> bool) {
        eventually(within, async || {
            let hits = self.hits();
            if done(&hits) {
                return Ok(());
            }
            let mut by_path: BTreeMap<&str, usize> = BTreeMap::new();
            let mut bulk = Vec::new();
            for hit in &hits {
                *by_path.entry(hit.path.as_str()).or_default() += 1;
                if hit.path == "/bulk" {
                    bulk.push(hit.json().to_string());
                }
            }
            Err(format!(
                "app did not get what was expected; requests by path: {by_path:?}; bulk requests: {bulk:?}"
            ))
        })
        .await
    }

    fn first_time(&self, id: &str) -> bool {
        let mut seen = self.seen.lock().expect("seen");
        let n = seen.entry(id.to_string()).or_insert(0);
        *n += 1;
        *n == 1
    }
}

async fn subscribe_list(State(app): State<DaprApp>, headers: HeaderMap) -> Response {
    let token = headers
        .get("dapr-api-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    app.subscribe_tokens.lock().expect("tokens").push(token);
    let list = app.subscriptions.lock().expect("subs").clone();
    if list.is_null() {
        return StatusCode::NOT_FOUND.into_response();
    }
    axum::Json(list).into_response()
}

async fn health(State(app): State<DaprApp>) -> StatusCode {
    app.probes.fetch_add(1, Ordering::SeqCst);
    if app.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn deliver(
    State(app): State<DaprApp>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hit = Hit {
        path: uri.path().to_string(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
        api_token: headers
            .get("dapr-api-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
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

/// The app `id` at `http://127.0.0.1:{port}`: 3 attempts, retries from 20 ms.
pub fn app_config(id: &str, port: u16) -> DaprAppConfig {
    DaprAppConfig {
        id: id.into(),
        url: format!("http://127.0.0.1:{port}"),
        max_attempts: 3,
        retry_initial_ms: 20,
        app_api_token_env: None,
        ..DaprAppConfig::default()
    }
}

/// Publishes through the Dapr API (`path` is the whole request path, with its query);
/// returns status and answer.
pub async fn dapr_publish(
    router: &impl RouterApi,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    router.post(path, content_type, body).await
}

/// Publishes through the Dapr API and asserts it was stored (204).
pub async fn dapr_publish_ok(
    router: &impl RouterApi,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) {
    let (status, answer) = dapr_publish(router, path, content_type, body).await;
    assert_eq!(status, 204, "{path}: {answer}");
}

/// The envelopes stored for `topic`, oldest first.
pub fn stored_on(redis: &RedisServer, topic: &str) -> Vec<Envelope> {
    let mut envelopes: Vec<_> = redis
        .all_envelopes()
        .into_iter()
        .map(|(_, _, e)| e)
        .filter(|e| e.topic == topic)
        .collect();
    envelopes.sort_by_key(|e| e.received_us);
    envelopes
}

/// Asks evrouter to read app `id`'s subscriptions again; returns status and answer.
pub async fn refresh_app(router: &impl RouterApi, id: &str) -> (u16, Value) {
    router
        .post_empty(&format!("/v1/dapr/apps/{id}/refresh"))
        .await
}
