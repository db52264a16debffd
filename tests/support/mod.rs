//! Test support: a private `redis-server` per test, evrouter in-process ([`TestRouter`]) or
//! as the real binary ([`process::RouterProcess`]), both driven through [`RouterApi`]; a
//! recording webhook subscriber, a fake Dapr app, and one way to wait for something
//! ([`eventually`]).
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod dapr_app;
pub mod events;
pub mod process;
pub mod redis_server;
pub mod router;
pub mod subscriber;
pub mod wait;

// evrouter's library as the tests see it. Every `evrouter::` path the tests use is named
// here and nowhere else: a change to the crate's module layout is made in this block.
pub use evrouter::config::{
    Config, DaprAppConfig, DaprPubsubConfig, Durability, KeyRuleConfig, StreamConfig,
};
pub use evrouter::event::{Envelope, PayloadFormat};
pub use evrouter::streams::partition_of;
pub use evrouter::trace::is_valid_traceparent;
pub use evrouter::{run as run_router, RunError};

pub use api::{client, fast_retries, RouterApi};
pub use events::{keyed_event, order_event, publish_keyed};
pub use redis_server::{dlq_entries, RedisServer};
pub use router::{test_config, TestRouter};
pub use wait::eventually;

use std::net::TcpListener as StdListener;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends test logs to the test harness, which prints them only when a test fails.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVR_LOG")
                .unwrap_or_else(|_| "evrouter=debug,info".into()),
        )
        .with_test_writer()
        .try_init();
}

// Transitional: the free helpers the test files called before `RouterApi`; removed once
// every file uses the trait.
use serde_json::Value;

/// GETs `url` and reads the answer as JSON.
pub async fn get_json(url: String) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json answer")
}

/// The status of a `method` request to `url` with no body.
pub async fn status_of(method: reqwest::Method, url: String) -> u16 {
    client()
        .request(method, url)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Creates a subscription through the API and checks it was accepted.
pub async fn subscribe(router: &TestRouter, spec: Value) {
    let (status, body) = router.create_subscription(&spec).await;
    assert!(
        status == 201 || status == 200,
        "subscription refused: {status} {body}"
    );
}

impl TestRouter {
    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        RouterApi::url(self, path)
    }

    /// POSTs JSON to `/v1/publish/{topic}`; returns status and body.
    pub async fn publish(&self, topic: &str, body: &Value) -> (u16, Value) {
        RouterApi::publish(self, topic, body).await
    }

    /// POSTs `body` with `content_type` to `path`; returns status and answer.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        RouterApi::post(self, path, content_type, body).await
    }
}
