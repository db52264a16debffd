//! `evrouter restore` after Redis lost its data.

use super::*;

/// Redis restarted without persistence loses every stream; `evrouter restore` writes the
/// archived events back with their ids (read in time slices of 10 events, several at
/// once), and a subscription made again reads them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_writes_archived_events_back_after_redis_lost_them() {
    let _shared = support::light().await;
    let mut redis = RedisServer::start();
    let db = TestDb::create().await;
    let config = store_config(&redis, &db);
    let from = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let router = TestRouter::start(config.clone()).await;
    // Over several seconds, so that the restore below reads several time slices at once.
    let mut published = 0;
    for second in 0..4u64 {
        let events: Vec<_> = (second * 5..second * 5 + 5)
            .flat_map(|seq| {
                (0..5u64).map(move |k| {
                    support::events::keyed_event(seq * 5 + k, &format!("ord_{k}"), seq)
                })
            })
            .collect();
        published += events.len();
        router.publish_ok("order.created", &json!(events)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    wait_for_rows(&db, published as i64).await;
    let to = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(1));
    let before: std::collections::BTreeSet<(String, String)> = redis
        .all_envelopes()
        .into_iter()
        .filter(|(_, _, e)| e.topic == "order.created")
        .map(|(key, id, _)| (key, id))
        .collect();
    assert_eq!(before.len(), published);
    router.stop().await.expect("clean stop");

    redis.restart();
    assert_eq!(redis.order_entries(), 0, "Redis lost everything");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("evrouter.toml");
    std::fs::write(
        &file,
        format!(
            "[redis]\nurl = \"{}\"\n\n[eventstore]\nurl = \"{}\"\n",
            redis.url(),
            db.url
        ),
    )
    .expect("config");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .args(["restore", "--config"])
        .arg(&file)
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--slice-events", "10"])
        .output()
        .await
        .expect("evrouter restore");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["written"], published);
    assert_eq!(report["skipped"], 0);
    let after: std::collections::BTreeSet<(String, String)> = redis
        .all_envelopes()
        .into_iter()
        .filter(|(_, _, e)| e.topic == "order.created")
        .map(|(key, id, _)| (key, id))
        .collect();
    assert_eq!(
        after, before,
        "every event back in its partition under its id"
    );

    // A subscription made again reads them from the start, in order per key.
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "again",
            &["order.*"],
            &subscriber.url(),
            json!({"start": "earliest"}),
        )
        .await;
    let log = subscriber
        .wait_for(published, Duration::from_secs(30))
        .await;
    support::subscriber::assert_in_key_order(&log, 5, 20);
    // A second restore skips what is there.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .args(["restore", "--config"])
        .arg(&file)
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .output()
        .await
        .expect("evrouter restore");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("report");
    assert_eq!(report["written"], 0);
    assert_eq!(report["skipped"], published);
    router.stop().await.expect("clean stop");
}
