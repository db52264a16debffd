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
    let mut config = store_config(&redis, &db);
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

    // Stored sealed: no payload in the clear, no trace of the subject's data in the
    // sealed bytes, and read back opened.
    let client_pg = db.client().await;
    let sealed: i64 = client_pg
        .query_one(
            "SELECT count(*) FROM evr_events
              WHERE sealed IS NOT NULL AND payload IS NULL AND payload_bytes IS NULL
                AND position('cust_'::bytea in sealed) = 0",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(sealed, 10, "every event about a subject is stored sealed");
    // Only events about a subject are in the subjects index, and a search by subject
    // (with the index's own condition, as evrouter's are) reads it.
    let plan = client_pg
        .simple_query(
            "SET enable_seqscan = off;
             EXPLAIN SELECT event_id FROM evr_events WHERE subjects @> ARRAY['cust_gone'] AND subjects <> '{}';
             RESET enable_seqscan",
        )
        .await
        .expect("plan");
    let plan: Vec<&str> = plan
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan on") && l.contains("subjects")),
        "{plan:#?}"
    );
    let partial: i64 = client_pg
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'evr_events_subjects'
                AND indexdef LIKE '%WHERE (subjects <> ''{}''::text[])%'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(
        partial, 1,
        "the subjects index leaves out events about no one"
    );
    let page = router
        .get_json("/v1/events?topic=order.created&limit=100")
        .await;
    let opened = page["events"].as_array().expect("events");
    assert_eq!(opened.len(), 10, "{page}");
    assert!(opened.iter().all(|e| e["payload"]["data"]["customer_id"]
        .as_str()
        .is_some_and(|c| c.starts_with("cust_"))));
    // A backup taken before the erasure.
    client_pg
        .batch_execute("CREATE TABLE backup_copy AS SELECT * FROM evr_events")
        .await
        .expect("backup");

    let (status, erased) = router.post_empty("/v1/subjects/cust_gone/erase").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["keys"], 1, "the subject's key is shredded");
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
    let tombstones: i64 = client_pg
        .query_one(
            "SELECT count(*) FROM evr_events WHERE payload->>'erased' = 'true' AND payload::text NOT LIKE '%cust_gone%'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(tombstones, 4);
    // The backup put back: its copies of the subject's events are sealed under a key
    // that no longer exists, so they read as tombstones; the other subject's still open.
    client_pg
        .batch_execute(
            "DELETE FROM evr_events;
             INSERT INTO evr_events SELECT * FROM backup_copy",
        )
        .await
        .expect("backup restored");
    let restored = export("cust_gone").await;
    assert_eq!(restored.len(), 4, "{restored:?}");
    assert!(
        restored
            .iter()
            .all(|l| l["event"]["erased"] == true && !l["event"].to_string().contains("cust_gone")),
        "{restored:?}"
    );
    let kept_rows = export("cust_kept").await;
    assert!(
        kept_rows
            .iter()
            .filter(|l| l["source"] == "event_store")
            .all(|l| l["event"]["data"]["customer_id"] == "cust_kept"),
        "{kept_rows:?}"
    );
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

/// A deleted subscription takes its dead letters with it (a new one of the same name
/// starts with an empty DLQ), and an erasure finds a subject's dead letters in every DLQ
/// stream Redis holds — also one of no subscription, as an older version left them —
/// and answers `remaining: 0` only when none is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_finds_dead_letters_no_subscription_owns_and_delete_discards_them() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = store_config(&redis, &db);
    config.eventstore.subjects = vec![support::SubjectConfig {
        topics: vec!["order.>".into()],
        pointers: vec!["/data/customer_id".into()],
    }];
    let router = TestRouter::start(config).await;
    let refusing = Subscriber::with_rule(std::sync::Arc::new(|_| (400, String::new()))).await;
    let extra = json!({"max_attempts": 1});
    router
        .subscribe("refuser", &["order.*"], &refusing.url(), extra.clone())
        .await;
    let events: Vec<_> = (0..4)
        .map(|i| {
            let mut event = order_event(i, &format!("ord_d{i}"));
            event["data"]["customer_id"] = json!("cust_dlq");
            event
        })
        .collect();
    router.publish_ok("order.created", &json!(events)).await;
    wait_for_rows(&db, 4).await;
    eventually(Duration::from_secs(30), async || {
        let n = support::dlq_entries(&redis, "refuser").len();
        (n == 4).then_some(()).ok_or(format!("{n} dead letters"))
    })
    .await;
    // The same dead letters under a subscription that does not exist, as an older
    // version left them when it deleted one.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("evr:{*}:dlq:refuser")
        .query(&mut conn)
        .expect("keys");
    for key in &keys {
        let ghost = key.replace(":dlq:refuser", ":dlq:ghost");
        let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("xrange");
        for entry in range.ids {
            let mut add = redis::cmd("XADD");
            add.arg(&ghost).arg("*");
            for (field, value) in &entry.map {
                if let redis::Value::BulkString(bytes) = value {
                    add.arg(field).arg(bytes.as_slice());
                }
            }
            let _: String = add.query(&mut conn).expect("xadd");
        }
    }
    assert_eq!(support::dlq_entries(&redis, "ghost").len(), 4);

    let deleted = client()
        .delete(router.url("/v1/subscriptions/refuser"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        support::dlq_entries(&redis, "refuser").len(),
        0,
        "a deleted subscription's dead letters are discarded with it"
    );

    let (status, erased) = router.post_empty("/v1/subjects/cust_dlq/erase").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        erased["dlqs"], 4,
        "the dead letters no subscription owns: {erased}"
    );
    assert_eq!(erased["remaining"], 0, "{erased}");
    assert_eq!(
        support::dlq_entries(&redis, "ghost").len(),
        0,
        "nothing of the subject is left in Redis"
    );

    // A new subscription of the same name starts with an empty DLQ.
    router
        .subscribe("refuser", &["order.*"], &refusing.url(), extra)
        .await;
    let page = router.get_json("/v1/dlq/refuser").await;
    assert_eq!(page["entries"], json!([]), "{page}");
    router.stop().await.expect("clean stop");
}

/// The event store over TLS (the server's certificate checked against the CA given),
/// with the subjects' keys in a database of their own; a CA that did not sign the
/// server's certificate leaves the store unready and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_store_speaks_tls_and_keeps_keys_in_their_own_database() {
    let _shared = support::light().await;
    let db = TestDb::create().await;
    let keys_db = TestDb::create().await;
    let admin = db.client().await;
    let ssl: String = admin
        .query_one("SHOW ssl", &[])
        .await
        .expect("show ssl")
        .get(0);
    assert_eq!(ssl, "on", "the test PostgreSQL serves TLS");
    let cert_file: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("show ssl_cert_file")
        .get(0);
    // The server's certificate is self-signed for `localhost`: it is its own CA.
    let ca = std::env::temp_dir().join(format!("evr-pg-ca-{}.pem", std::process::id()));
    std::fs::write(
        &ca,
        std::fs::read(&cert_file).expect("the server's certificate"),
    )
    .expect("ca");
    let over_tls = |url: &str| format!("{}?sslmode=require", url.replace("127.0.0.1", "localhost"));

    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.eventstore.url = Some(over_tls(&db.url));
    config.eventstore.keys_url = Some(over_tls(&keys_db.url));
    config.eventstore.tls_ca = Some(ca.clone());
    config.eventstore.batch_wait = "20ms".into();
    config.eventstore.subjects = vec![support::SubjectConfig {
        topics: vec!["order.>".into()],
        pointers: vec!["/data/customer_id".into()],
    }];
    let router = TestRouter::start(config).await;
    publish_orders(&router, 0, 50).await;
    wait_for_rows(&db, 50).await;
    let encrypted: Vec<bool> = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = ANY($1)",
            &[&vec![db.name.clone(), keys_db.name.clone()]],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The test's own connection (plain) is to `db` too.
    assert!(
        encrypted.iter().filter(|ssl| **ssl).count() >= 2,
        "evrouter's connections to both databases are encrypted: {encrypted:?}"
    );
    let keys: i64 = keys_db
        .client()
        .await
        .query_one("SELECT count(*) FROM evr_subject_keys", &[])
        .await
        .expect("keys")
        .get(0);
    assert!(keys > 0, "keys are made in the keys database");
    assert!(
        admin
            .query_one("SELECT count(*) FROM evr_subject_keys", &[])
            .await
            .is_err(),
        "and not in the event store's"
    );
    let page = router
        .get_json("/v1/events?topic=order.created&limit=5")
        .await;
    assert_eq!(page["events"].as_array().map_or(0, Vec::len), 5, "{page}");
    assert!(
        page["events"][0]["payload"]["data"]["customer_id"].is_string(),
        "{page}"
    );
    router.stop().await.expect("clean stop");

    // A CA that did not sign the server's certificate: no connection is made.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(&ca, other.cert.pem()).expect("ca");
    let redis = RedisServer::start();
    let wrong_db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(over_tls(&wrong_db.url));
    config.eventstore.tls_ca = Some(ca.clone());
    let router = TestRouter::start(config).await;
    publish_orders(&router, 0, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = client()
        .get(router.url("/v1/events?limit=1"))
        .send()
        .await
        .expect("events");
    assert_eq!(
        response.status(),
        503,
        "the store is not ready without a trusted server"
    );
    assert_eq!(
        wrong_db.count().await,
        -1,
        "no schema was made over an unverified connection"
    );
    router.stop().await.expect("clean stop");
    let _ = std::fs::remove_file(&ca);
}
