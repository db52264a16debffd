//! Logs as JSON lines (`EVR_LOG_FORMAT=json`), from the real binary: every line is one JSON
//! object, and an event of interest (a dead letter) carries its subscription, event id
//! and trace id.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::process::RouterProcess;
use support::subscriber::Subscriber;
use support::{eventually, order_event, RedisServer, RouterApi};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_dead_letters_carry_their_ids() {
    let redis = RedisServer::start();
    let refusing = Subscriber::with_rule(Arc::new(|_| (400, String::new()))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[[subscriptions]]\nname = \"audit\"\ntopics = [\"order.>\"]\nendpoints = [\"{}\"]\nmax_attempts = 1\n",
            refusing.url()
        ),
    )
    .expect("config");
    let router =
        RouterProcess::start_with_env(&redis, Some(&config), &[("EVR_LOG_FORMAT", "json")]).await;
    let event = order_event(7, "ord_7");
    router.publish_ok("order.created", &event).await;
    let line = eventually(Duration::from_secs(30), async || {
        router
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "event dead-lettered")
            .ok_or_else(|| "no dead letter logged yet".to_string())
    })
    .await;
    assert_eq!(line["subscription"], "audit", "{line}");
    assert_eq!(line["event_id"], event["event_id"], "{line}");
    assert_eq!(
        line["correlation_id"], event["metadata"]["correlation_id"],
        "{line}"
    );
    assert_eq!(line["level"], "INFO", "{line}");
    let trace_id = line["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
    for l in router.log().lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<Value, _> = serde_json::from_str(l);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON object: {l}"
        );
    }
}
