//! `GET /metrics` against a real Redis and a real subscriber: what was published and
//! delivered shows in the counters and histograms, the classic text format passes
//! `promtool check metrics` (Debian's `prometheus` package), OpenMetrics is served when
//! asked for, and `/v1/stats` gives percentiles from the same histograms.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::subscriber::Subscriber;
use support::{client, eventually, keyed_event, test_config, RedisServer, RouterApi, TestRouter};

/// The value of the sample `name{labels}` (labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(router: &TestRouter, accept: Option<&str>) -> (String, String) {
    let mut request = client().get(router.url("/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    (content_type, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_and_delivered_events_show_in_metrics_and_stats() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe("shipping", &["order.*"], &subscriber.url(), json!({}))
        .await;
    // A subscriber that refuses everything: its events go to the DLQ at the first attempt.
    let refusing = Subscriber::with_rule(std::sync::Arc::new(|_| (400, String::new()))).await;
    router
        .subscribe(
            "audit",
            &["order.*"],
            &refusing.url(),
            json!({"max_attempts": 1}),
        )
        .await;
    // 5 requests of 10 events, and one request refused (not JSON).
    for r in 0..5u64 {
        let batch: Vec<Value> = (0..10)
            .map(|k| keyed_event(r * 10 + k, &format!("ord_{k}"), r))
            .collect();
        router
            .publish_ok("order.created", &Value::Array(batch))
            .await;
    }
    let (status, _) = router
        .post("/v1/publish/order.created", "application/json", "{not json")
        .await;
    assert_eq!(status, 400);
    subscriber.wait_for(50, Duration::from_secs(30)).await;

    let text = eventually(Duration::from_secs(30), async || {
        let (_, text) = scrape(&router, None).await;
        match sample(
            &text,
            "evrouter_delivery_latency_seconds_count{subscription=\"shipping\"}",
        ) {
            Some(n) if n >= 50.0 => Ok(text),
            other => Err(format!("delivery latency count {other:?}")),
        }
    })
    .await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        "evrouter_published_total{family=\"order\",api=\"native\"}",
        50.0,
    );
    expect(
        "evrouter_publish_duration_seconds_count{family=\"order\",api=\"native\"}",
        5.0,
    );
    expect(
        "evrouter_publish_duration_seconds_bucket{le=\"+Inf\",family=\"order\",api=\"native\"}",
        5.0,
    );
    expect("evrouter_delivered_total{subscription=\"shipping\"}", 50.0);
    expect(
        "evrouter_delivery_latency_seconds_bucket{le=\"+Inf\",subscription=\"shipping\"}",
        50.0,
    );
    let rejected: f64 = text
        .lines()
        .filter(|l| l.starts_with("evrouter_rejected_total{") && l.contains("api=\"native\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 1.0, "{text}");
    // Buckets are cumulative and end at the count.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with("evrouter_delivery_latency_seconds_bucket{")
                && l.contains("subscription=\"shipping\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(buckets.len(), 17, "16 bounds and +Inf");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert!(
        sample(
            &text,
            "evrouter_redis_round_trip_seconds_count{op=\"write\"}"
        )
        .is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert!(text.contains("# TYPE evrouter_delivered_total counter"));
    assert!(!text.contains("# EOF"));

    // What is read from Redis every few seconds: the DLQ of `audit` holds its 50 events;
    // nothing of `shipping` waits; Redis answers; the instance holds every partition.
    let text = eventually(Duration::from_secs(30), async || {
        let (_, text) = scrape(&router, None).await;
        match (
            sample(&text, "evrouter_dead_letters{subscription=\"audit\"}"),
            sample(&text, "evrouter_lag_seconds{subscription=\"shipping\"}"),
        ) {
            (Some(dead), Some(lag)) if dead >= 50.0 && lag == 0.0 => Ok(text),
            other => Err(format!("dead letters and lag {other:?}")),
        }
    })
    .await;
    assert_eq!(
        sample(&text, "evrouter_dead_letters{subscription=\"audit\"}"),
        Some(50.0)
    );
    assert_eq!(sample(&text, "evrouter_redis_up"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "evrouter_ready"), Some(1.0), "{text}");
    assert!(
        sample(&text, "evrouter_owned_partitions").is_some_and(|n| n >= 16.0),
        "{text}"
    );
    assert!(
        sample(&text, "evrouter_redis_memory_used_bytes").is_some_and(|n| n > 0.0),
        "{text}"
    );
    let breaker = format!(
        "evrouter_breaker_open{{subscription=\"shipping\",endpoint=\"{}\"}}",
        subscriber.url()
    );
    assert_eq!(sample(&text, &breaker), Some(0.0), "{text}");

    // Every metric the alerts and the Grafana dashboard use is one evrouter exposes.
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/evrouter.json",
    ] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let text_of_file = std::fs::read_to_string(&path).expect("file");
        for used in text_of_file.split("evrouter_").skip(1) {
            let name: String = used
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name.as_str(), |n, suffix| {
                    n.strip_suffix(suffix).unwrap_or(n)
                });
            assert!(
                text.contains(&format!("# TYPE evrouter_{family} ")),
                "{file} uses evrouter_{name}, which /metrics does not have"
            );
        }
    }

    // The exposition passes Prometheus's own checks.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    std::io::Write::write_all(promtool.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let (content_type, open) =
        scrape(&router, Some("application/openmetrics-text;version=1.0.0")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(open.trim_end().ends_with("# EOF"));
    assert!(open.contains("# TYPE evrouter_delivered counter"));

    // /v1/stats reads the same histogram.
    let stats = router.stats().await;
    let latency = &stats["subscriptions"]["shipping"]["latency_ms"];
    assert_eq!(latency["count"], 50, "{latency}");
    for q in ["p50", "p95", "p99", "p999", "max"] {
        assert!(
            latency[q].as_f64().is_some_and(|v| v > 0.0),
            "{q}: {latency}"
        );
    }
    assert!(latency["p50"].as_f64() <= latency["p999"].as_f64());
    assert_eq!(
        stats["subscriptions"]["shipping"]["latency_ms_last_minute"]["count"],
        50
    );
    // The other histograms too: publish time per family and API, and Redis round trips.
    let histograms = stats["histograms"]
        .as_array()
        .unwrap_or_else(|| panic!("no histograms in {stats}"));
    let publish = histograms
        .iter()
        .find(|h| {
            h["name"] == "evrouter_publish_duration_seconds"
                && h["labels"]["family"] == "order"
                && h["labels"]["api"] == "native"
        })
        .expect("the publish histogram");
    assert_eq!(publish["unit"], "ms");
    assert_eq!(publish["since_start"]["count"], 5, "{publish}");
    assert!(publish["since_start"]["p95"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    assert!(histograms.iter().any(|h| {
        h["name"] == "evrouter_redis_batch_entries"
            && h["labels"]["op"] == "write"
            && h["unit"] == "entries"
            && h["since_start"]["max"].as_f64().is_some_and(|v| v >= 10.0)
    }));
    router.stop().await.expect("clean stop");
}
