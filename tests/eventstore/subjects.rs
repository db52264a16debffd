//! A data subject's events exported and erased everywhere.

use super::*;

/// A data subject's events: exported from PostgreSQL and from Redis (streams and a DLQ) as
/// JSON Lines, then erased everywhere; a second export finds nothing, other subjects'
/// events are untouched, and the audit trail says how many without naming the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_events_are_exported_then_erased_everywhere() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    config.eventstore.subjects = vec![support::SubjectConfig {
        topics: vec!["order.>".into()],
        pointers: vec!["/data/customer_id".into()],
    }];
    let router = TestRouter::start(config).await;
    let refusing = Subscriber::with_rule(std::sync::Arc::new(|_| (400, String::new()))).await;
    router
        .subscribe(
            "refuser",
            &["order.*"],
            &refusing.url(),
            json!({"max_attempts": 1}),
        )
        .await;
    let events: Vec<_> = (0..10)
        .map(|i| {
            let mut event = order_event(i, &format!("ord_s{i}"));
            event["data"]["customer_id"] = json!(if i < 4 { "cust_gone" } else { "cust_kept" });
            event
        })
        .collect();
    router.publish_ok("order.created", &json!(events)).await;
    wait_for_rows(&db, 10).await;
    eventually(Duration::from_secs(30), async || {
        let page = router.get_json("/v1/dlq/refuser").await;
        let n = page["entries"].as_array().map_or(0, Vec::len);
        if n == 10 {
            Ok(())
        } else {
            Err(format!("{n} dead letters"))
        }
    })
    .await;

    let export = |subject: &'static str| {
        let url = router.url(&format!("/v1/subjects/{subject}/export"));
        async move {
            let response = client().get(url).send().await.expect("export");
            assert_eq!(response.status(), 200);
            let text = response.text().await.expect("lines");
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
                .collect::<Vec<_>>()
        }
    };
    let lines = export("cust_gone").await;
    let count = |source: &str| lines.iter().filter(|l| l["source"] == source).count();
    // 4 archived rows, 4 stream entries, 4 dead letters.
    assert_eq!(
        (count("event_store"), count("redis"), count("dlq")),
        (4, 4, 4),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .all(|l| l["event"]["data"]["customer_id"] == "cust_gone"));

    let (status, erased) = router.post_empty("/v1/subjects/cust_gone/erase").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["event_store"], 4);
    assert_eq!(erased["streams"], 4);
    assert_eq!(erased["dlqs"], 4);
    assert_eq!(erased["remaining"], 0);
    assert!(
        export("cust_gone").await.is_empty(),
        "nothing of the subject remains"
    );
    let kept = export("cust_kept").await;
    assert_eq!(
        kept.len(),
        18,
        "6 rows, 6 entries, 6 dead letters of another subject stay"
    );
    // The rows stay as tombstones, without the subject's data.
    let client_pg = db.client().await;
    let tombstones: i64 = client_pg
        .query_one(
            "SELECT count(*) FROM evr_events WHERE payload->>'erased' = 'true' AND payload::text NOT LIKE '%cust_gone%'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(tombstones, 4);
    let audit = router.get_json("/v1/audit").await;
    let text = audit.to_string();
    assert!(text.contains("ERASE data subject"), "{text}");
    assert!(text.contains("4 event store rows redacted"), "{text}");
    assert!(
        !text.contains("cust_gone"),
        "the audit trail does not name the subject: {text}"
    );
    router.stop().await.expect("clean stop");
}
