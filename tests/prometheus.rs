//! A real Prometheus (Debian's `prometheus` package) scrapes a running evrouter, and its
//! query API shows what was published: the exposition works for the server that reads it,
//! not only for a parser in the test.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{
    client, eventually, free_port, order_event, test_config, RedisServer, RouterApi, TestRouter,
};

/// A Prometheus server, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second.
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: evrouter\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package) is installed");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The result of an instant query, or why there is none yet.
    async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let response = client()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match body["data"]["result"].as_array() {
            Some(result) if !result.is_empty() => Ok(result.clone()),
            _ => Err(format!("no result yet: {body}")),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_evrouter_and_sees_a_published_event() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    router
        .publish_ok("order.created", &order_event(1, "ord_1"))
        .await;
    let target = router.base().trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target);
    let result = eventually(Duration::from_secs(60), async || {
        prometheus.query("evrouter_published_total").await
    })
    .await;
    assert_eq!(result.len(), 1, "{result:?}");
    let sample = &result[0];
    assert_eq!(sample["metric"]["family"], "order", "{sample}");
    assert_eq!(sample["metric"]["api"], "native", "{sample}");
    assert_eq!(sample["metric"]["job"], "evrouter", "{sample}");
    assert_eq!(sample["value"][1], "1", "{sample}");
    // The histograms are read as histograms: a quantile comes out of the buckets.
    let p95 = eventually(Duration::from_secs(30), async || {
        prometheus
            .query(
                "histogram_quantile(0.95, sum by (le) (evrouter_publish_duration_seconds_bucket))",
            )
            .await
    })
    .await;
    let seconds: f64 = p95[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(seconds > 0.0 && seconds <= 10.0, "{p95:?}");
    drop(prometheus);
    router.stop().await.expect("clean stop");
}
