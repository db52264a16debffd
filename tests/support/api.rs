//! evrouter's HTTP API as the tests call it, the same for the in-process router and the
//! real binary: both implement [`RouterApi`] by giving their base URL.

use std::time::Duration;

use serde_json::{json, Value};

/// A shared HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Short retries for subscriptions whose endpoint fails on purpose.
pub fn fast_retries() -> Value {
    json!({"initial_ms": 10, "max_ms": 50, "multiplier": 2.0, "jitter": 0.2})
}

/// Sends `request`; returns the status and the answer as JSON (null when it is not JSON).
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Requests to a running evrouter.
pub trait RouterApi {
    /// `http://{host}:{port}`.
    fn base(&self) -> &str;

    /// `{base}{path}`.
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    /// POSTs `body` with `content_type` to `path`; returns status and the answer as JSON
    /// (null when it is not JSON).
    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        answer(
            client()
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// POSTs nothing to `path`; returns status and the answer as JSON (null when it is not
    /// JSON).
    async fn post_empty(&self, path: &str) -> (u16, Value) {
        answer(client().post(self.url(path))).await
    }

    /// POSTs JSON (one event or a batch) to `/v1/publish/{topic}`; returns status and body.
    async fn publish(&self, topic: &str, body: &Value) -> (u16, Value) {
        self.post(
            &format!("/v1/publish/{topic}"),
            "application/json",
            body.to_string(),
        )
        .await
    }

    /// Publishes and asserts it was accepted (200); returns the receipt (an array of
    /// receipts for a batch).
    async fn publish_ok(&self, topic: &str, body: &Value) -> Value {
        let (status, receipt) = self.publish(topic, body).await;
        assert_eq!(status, 200, "publish to {topic} refused: {receipt}");
        receipt
    }

    /// POSTs a subscription spec as it is; returns status and answer.
    async fn create_subscription(&self, spec: &Value) -> (u16, Value) {
        self.post("/v1/subscriptions", "application/json", spec.to_string())
            .await
    }

    /// Creates the subscription `name` to `topics` delivering to `endpoint`, with the
    /// fields of `extra` (an object; `json!({})` for none) added to the spec or replacing
    /// its own; asserts it was created.
    async fn subscribe(&self, name: &str, topics: &[&str], endpoint: &str, extra: Value) {
        let mut spec = json!({"name": name, "topics": topics, "endpoints": [endpoint]});
        for (field, value) in extra.as_object().expect("extra is an object") {
            spec[field] = value.clone();
        }
        let (status, answer) = self.create_subscription(&spec).await;
        assert_eq!(status, 201, "subscription {spec} refused: {answer}");
    }

    /// GETs `path` and reads the answer as JSON.
    async fn get_json(&self, path: &str) -> Value {
        client()
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json answer")
    }

    /// `/v1/stats`.
    async fn stats(&self) -> Value {
        self.get_json("/v1/stats").await
    }

    /// The status of a `method` request to `path` with no body.
    async fn status_of(&self, method: reqwest::Method, path: &str) -> u16 {
        client()
            .request(method, self.url(path))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }
}
