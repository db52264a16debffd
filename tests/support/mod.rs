//! Test support: a private `redis-server` per test on a free port, and evrouter started
//! in-process on port 0 with a config the test shapes.
#![allow(dead_code)]

pub mod process;
pub mod subscriber;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use evrouter::config::Config;
use evrouter::model::envelope::Envelope;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// A `redis-server` owned by one test, stopped on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a throwaway server: no RDB, no AOF.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server that fsyncs every write to its AOF, for durability tests.
    pub fn start_durable() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// Starts a server with extra arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            port: free_port(),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        for _ in 0..200 {
            if redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's data folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP or SIGCONT the server.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// Every envelope stored in every `evr:*` partition key, decoded.
    pub fn all_envelopes(&self) -> Vec<(String, String, Envelope)> {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:{*}")
            .query(&mut conn)
            .expect("keys");
        let mut out = Vec::new();
        for key in keys {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .expect("xrange");
            for entry in entries.ids {
                let bytes: Vec<u8> = entry.get("e").expect("field e");
                out.push((
                    key.clone(),
                    entry.id.clone(),
                    Envelope::decode(&bytes).expect("envelope"),
                ));
            }
        }
        out
    }
}

impl RedisServer {
    /// Number of entries in `key` that decode as envelopes (others are skipped).
    pub fn decodable_entries(&self, key: &str) -> usize {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut self.conn())
            .expect("xrange");
        entries
            .ids
            .iter()
            .filter_map(|entry| entry.get::<Vec<u8>>("e"))
            .filter(|bytes| Envelope::decode(bytes).is_ok())
            .count()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// evrouter running in-process, stopped on drop.
pub struct TestRouter {
    pub base: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), evrouter::RunError>>>,
}

/// A config pointing at `redis` with short timeouts for tests.
pub fn test_config(redis: &RedisServer) -> Config {
    let mut config = Config::default();
    config.redis.url = redis.url();
    config.redis.response_timeout = "1s".into();
    config.server.publish_timeout = "3s".into();
    config.server.shutdown_grace = "5s".into();
    config
}

impl TestRouter {
    /// Starts evrouter with `config` on a free port.
    pub async fn start(config: Config) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(evrouter::run(config, listener, async {
            let _ = rx.await;
        }));
        Self {
            base,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Asks it to stop and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), evrouter::RunError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("run task"),
            None => Ok(()),
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs JSON to `/v1/publish/{topic}`; returns status and body.
    pub async fn publish(&self, topic: &str, body: &Value) -> (u16, Value) {
        self.post(
            &format!("/v1/publish/{topic}"),
            "application/json",
            body.to_string(),
        )
        .await
    }

    /// POSTs `body` with `content_type` to `path`; returns status and the answer as JSON
    /// (null when it is not JSON).
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let response = client()
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

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

/// A shared HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A valid platform event about `order_id`.
pub fn order_event(n: u64, order_id: &str) -> Value {
    json!({
        "event_id": format!("evt_order_{n}"),
        "event_type": "order.created",
        "timestamp": "2026-01-30T10:00:00Z",
        "version": "1.0",
        "data": {"order_id": order_id, "customer_id": "cust_1", "total_amount": 99.5,
                 "items": [{"product_id": "prod_1", "quantity": 2}]},
        "metadata": {"correlation_id": format!("corr_{n}"), "service": "order-service", "version": "1.0.0"}
    })
}

/// An order event with a per-key sequence number in `data.seq`.
pub fn keyed_event(n: u64, order_id: &str, seq: u64) -> Value {
    let mut event = order_event(n, order_id);
    event["data"]["seq"] = json!(seq);
    event
}

/// Creates a subscription through the API and checks it was accepted.
pub async fn subscribe(router: &TestRouter, spec: Value) {
    let response = client()
        .post(router.url("/v1/subscriptions"))
        .json(&spec)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status == 201 || status == 200,
        "subscription refused: {status} {body}"
    );
}

/// A temporary folder path that outlives the call.
pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Every dead letter of a subscription, over all its partitions: each entry's fields.
pub fn dlq_entries(redis: &RedisServer, subscription: &str) -> Vec<HashMap<String, String>> {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("evr:{{*}}:dlq:{subscription}"))
        .query(&mut conn)
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("xrange");
        for entry in range.ids {
            let mut fields = HashMap::new();
            for (name, value) in &entry.map {
                if let redis::Value::BulkString(bytes) = value {
                    fields.insert(name.clone(), String::from_utf8_lossy(bytes).into_owned());
                }
            }
            out.push(fields);
        }
    }
    out
}
