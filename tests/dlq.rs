//! Dead letters against a real Redis and a real HTTP subscriber: events that use up their
//! attempts land in the DLQ with their failure, which the API lists in pages, replays (by
//! id, or all through the CLI) and purges.

mod support;

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::subscriber::Subscriber;
use support::{
    client, dlq_entries, eventually, fast_retries, keyed_event, publish_keyed, test_config,
    RedisServer, RouterApi, TestRouter,
};

/// A subscriber that answers 400 until the flag is set, then 200. 400 is retried, but the
/// endpoint stays healthy (a 5xx would open its breaker and slow the retries down to one
/// probe per cooldown).
async fn recovering_subscriber() -> (Subscriber, Arc<AtomicBool>) {
    let recovered = Arc::new(AtomicBool::new(false));
    let flag = recovered.clone();
    let subscriber = Subscriber::with_rule(Arc::new(move |_| {
        if flag.load(AtomicOrdering::Relaxed) {
            (200, String::new())
        } else {
            (400, String::new())
        }
    }))
    .await;
    (subscriber, recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_subscriber_gets_everything_into_the_dlq() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let (subscriber, recovered) = recovering_subscriber().await;
    router
        .subscribe(
            "audit",
            &["order.created"],
            &subscriber.url(),
            json!({"max_attempts": 3, "backoff": fast_retries()}),
        )
        .await;
    let total = publish_keyed(&router, "order.created", 5, 4).await;
    subscriber
        .wait_for(total * 3, Duration::from_secs(60))
        .await;
    // Wait for the dead letters to be written.
    let dead = eventually(Duration::from_secs(30), async || {
        let dead = dlq_entries(&redis, "audit");
        if dead.len() >= total {
            Ok(dead)
        } else {
            Err(format!("{} of {total} dead letters", dead.len()))
        }
    })
    .await;
    assert_eq!(dead.len(), total);
    for fields in &dead {
        assert_eq!(fields["reason"], "max_attempts_exceeded");
        assert_eq!(fields["attempts"], "3");
        assert_eq!(fields["last_status"], "400");
        assert!(fields.contains_key("first_attempt_ms") && fields.contains_key("last_attempt_ms"));
    }
    assert!(
        subscriber.received().iter().all(|r| r.attempt <= 3),
        "attempted beyond max_attempts"
    );
    let stats = router.stats().await;
    assert_eq!(
        stats["subscriptions"]["audit"]["dead_lettered"],
        total as u64
    );

    // The API lists them in pages with their failure info.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/dlq/audit?limit=7".to_string();
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let page = router.get_json(&path).await;
        let entries = page["entries"].as_array().expect("entries").clone();
        assert!(entries.len() <= 7);
        listed.extend(entries);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(listed.len(), total);
    assert!(listed.iter().all(|e| e["reason"] == "max_attempts_exceeded"
        && e["attempts"] == 3
        && e["event"]["data"]["order_id"].is_string()));
    assert_eq!(
        router
            .status_of(reqwest::Method::GET, "/v1/dlq/nobody")
            .await,
        404
    );

    // The subscriber recovers; one chosen entry is replayed, then the rest.
    recovered.store(true, AtomicOrdering::Relaxed);
    let before = subscriber.count();
    let first = listed[0]["id"].as_str().expect("id").to_string();
    let (_, report) = router
        .post(
            "/v1/dlq/audit/replay",
            "application/json",
            json!({"ids": [first]}).to_string(),
        )
        .await;
    assert_eq!(report["replayed"], 1);
    assert_eq!(subscriber.count(), before + 1);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .args([
            "dlq",
            "replay",
            "--subscription",
            "audit",
            "--router",
            &router.base,
        ])
        .output()
        .expect("cli");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["replayed"], total as u64 - 1);
    assert_eq!(subscriber.count(), before + total);
    assert!(dlq_entries(&redis, "audit").is_empty());

    // Purge: fail again, dead-letter, purge.
    recovered.store(false, AtomicOrdering::Relaxed);
    let mut extra = keyed_event(5000, "ord_x", 0);
    extra["event_id"] = json!("evt_order_5000");
    router.publish_ok("order.created", &extra).await;
    eventually(Duration::from_secs(30), async || {
        match dlq_entries(&redis, "audit").len() {
            1 => Ok(()),
            n => Err(format!("{n} dead letters, expected 1")),
        }
    })
    .await;
    let purged: Value = client()
        .delete(router.url("/v1/dlq/audit"))
        .send()
        .await
        .expect("purge")
        .json()
        .await
        .expect("json");
    assert_eq!(purged["purged"], 1);
    assert!(dlq_entries(&redis, "audit").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_has_the_shape_of_a_live_delivery() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let (subscriber, recovered) = recovering_subscriber().await;
    router
        .subscribe(
            "bulk-audit",
            &["order.created"],
            &subscriber.url(),
            json!({"mode": "bulk", "max_attempts": 1, "bulk": {"max_events": 10, "max_wait_ms": 1}}),
        )
        .await;
    let total = publish_keyed(&router, "order.created", 3, 1).await;
    eventually(Duration::from_secs(10), async || {
        let dead = dlq_entries(&redis, "bulk-audit").len();
        if dead >= total {
            Ok(())
        } else {
            Err(format!("{dead} of {total} dead letters"))
        }
    })
    .await;
    let live = subscriber.received();
    assert!(
        live.iter().all(|r| r.in_array),
        "bulk deliveries are arrays"
    );

    recovered.store(true, AtomicOrdering::Relaxed);
    let report: Value = client()
        .post(router.url("/v1/dlq/bulk-audit/replay"))
        .send()
        .await
        .expect("replay")
        .json()
        .await
        .expect("report");
    assert_eq!(report["replayed"], total as u64, "{report}");
    let replayed = &subscriber.received()[live.len()..];
    assert_eq!(replayed.len(), total);
    for event in replayed {
        // One event a request, as the bulk subscriber reads every request: an array.
        assert!(event.in_array && event.batch == 1, "{event:?}");
        assert_eq!(event.attempt, 1);
    }
    assert!(dlq_entries(&redis, "bulk-audit").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_pages_stop_at_their_byte_cap() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let (subscriber, _recovered) = recovering_subscriber().await;
    router
        .subscribe(
            "heavy",
            &["order.created"],
            &subscriber.url(),
            json!({"max_attempts": 1, "backoff": fast_retries()}),
        )
        .await;
    // 20 events of about 300 KB: about 6 MB of dead letters, over one page's 4 MiB.
    let filler = "x".repeat(300 * 1024);
    for i in 0..20 {
        let mut event = keyed_event(i, &format!("ord_{i}"), 1);
        event["data"]["notes"] = json!(filler);
        router.publish_ok("order.created", &event).await;
    }
    eventually(Duration::from_secs(20), async || {
        let dead = dlq_entries(&redis, "heavy").len();
        if dead >= 20 {
            Ok(())
        } else {
            Err(format!("{dead} of 20 dead letters"))
        }
    })
    .await;
    let first = router.get_json("/v1/dlq/heavy?limit=1000").await;
    let entries = first["entries"].as_array().cloned().unwrap_or_default();
    let bytes: usize = entries.iter().map(|e| e["event"].to_string().len()).sum();
    assert!(
        entries.len() < 20 && bytes <= 4 * 1024 * 1024 + 1024,
        "{} entries, {bytes} bytes",
        entries.len()
    );
    let next = first["next"].as_str().expect("a next cursor").to_string();
    let mut seen = entries.len();
    let mut after = next;
    loop {
        let page = router
            .get_json(&format!("/v1/dlq/heavy?limit=1000&after={after}"))
            .await;
        seen += page["entries"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 20, "every dead letter is on some page");
}
