//! Replays from the store into one subscription or to a topic; cancel and resume; the CLI.

use super::*;

async fn replay_status(router: &TestRouter, id: &str, state: &str) -> serde_json::Value {
    eventually(Duration::from_secs(60), async || {
        let status = router.get_json(&format!("/v1/replays/{id}")).await;
        if status["state"] == state {
            Ok(status)
        } else {
            Err(format!("{status}"))
        }
    })
    .await
}

/// A replay from PostgreSQL into one subscription: every archived event again, marked as
/// a replay, in stored order per key, to that subscription only; one stopped half-way
/// goes on from where it stopped; a replay to a topic publishes the events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_store_reaches_one_subscription_in_key_order_and_resumes() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let config = store_config(&redis, &db);
    let router = TestRouter::start(config).await;
    let target = Subscriber::ok().await;
    let other = Subscriber::ok().await;
    router
        .subscribe("replayed", &["order.*"], &target.url(), json!({}))
        .await;
    router
        .subscribe("bystander", &["order.*"], &other.url(), json!({}))
        .await;
    let bulk_target = Subscriber::ok().await;
    router
        .subscribe(
            "replayed-bulk",
            &["order.*"],
            &bulk_target.url(),
            json!({"mode": "bulk", "bulk": {"max_events": 20, "max_wait_ms": 5}}),
        )
        .await;
    let from = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let published = support::publish_keyed(&router, "order.created", 5, 10).await;
    target.wait_for(published, Duration::from_secs(30)).await;
    other.wait_for(published, Duration::from_secs(30)).await;
    bulk_target
        .wait_for(published, Duration::from_secs(30))
        .await;
    wait_for_rows(&db, published as i64).await;
    let to = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(60));

    let (status, started) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "target": {"subscription": "replayed"}, "rate": 2000})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["total"], published);
    let id = started["id"].as_str().expect("id").to_string();
    let done = replay_status(&router, &id, "done").await;
    assert_eq!(done["done"], published, "{done}");
    assert_eq!(done["failed"], 0);
    let log = target
        .wait_for(2 * published, Duration::from_secs(30))
        .await;
    let replayed: Vec<_> = log.iter().filter(|r| r.replay).cloned().collect();
    assert_eq!(
        replayed.len(),
        published,
        "every replayed request is marked"
    );
    support::subscriber::assert_in_key_order(&replayed, 5, 10);

    // Into a bulk subscription: in requests of up to its own size, in key order.
    let (status, started) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "target": {"subscription": "replayed-bulk"}, "rate": 2000})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    let done = replay_status(&router, &id, "done").await;
    assert_eq!(
        (done["done"].as_u64(), done["failed"].as_u64()),
        (Some(published as u64), Some(0)),
        "{done}"
    );
    let log = bulk_target
        .wait_for(2 * published, Duration::from_secs(30))
        .await;
    let replayed: Vec<_> = log.iter().filter(|r| r.replay).cloned().collect();
    assert_eq!(replayed.len(), published);
    assert!(
        replayed.iter().all(|r| r.in_array && r.batch <= 20),
        "bulk requests of at most 20"
    );
    assert!(
        replayed.iter().any(|r| r.batch > 1),
        "several events a request: {:?}",
        replayed.iter().map(|r| r.batch).collect::<Vec<_>>()
    );
    // One event of a key a request, so that one tried again never passes a later one.
    let mut requests: std::collections::BTreeMap<u64, Vec<&str>> = Default::default();
    for r in &replayed {
        requests.entry(r.arrived).or_default().push(&r.key);
    }
    for keys in requests.values() {
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(
            distinct.len(),
            keys.len(),
            "a key twice in one request: {keys:?}"
        );
    }
    support::subscriber::assert_in_key_order(&replayed, 5, 10);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        other.count(),
        published,
        "no other subscription gets the replay"
    );
    assert_eq!(target.count(), 2 * published, "nor the first one again");

    // Slowly, stopped after its first step, then resumed from there.
    let (_, slow) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "filter": {"keys": ["ord_0", "ord_1"]},
                   "target": {"subscription": "replayed"}, "rate": 10})
            .to_string(),
        )
        .await;
    let id = slow["id"].as_str().expect("id").to_string();
    assert_eq!(slow["total"], 20);
    let response = client()
        .delete(router.url(&format!("/v1/replays/{id}")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 202);
    let stopped = replay_status(&router, &id, "cancelled").await;
    let sent = stopped["done"].as_u64().expect("done");
    assert!(sent < 20, "stopped before the end: {stopped}");
    let (status, _) = router.post_empty(&format!("/v1/replays/{id}/resume")).await;
    assert_eq!(status, 202);
    let finished = replay_status(&router, &id, "done").await;
    assert_eq!(finished["done"], 20, "{finished}");

    // To a topic: published again there, stored once more.
    let (status, republish) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "filter": {"keys": ["ord_3"]}, "target": {"topic": "audit.replayed"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{republish}");
    let id = republish["id"].as_str().expect("id").to_string();
    replay_status(&router, &id, "done").await;
    let stored = support::dapr_app::stored_on(&redis, "audit.replayed");
    assert_eq!(stored.len(), 10);
    let seqs: Vec<u64> = stored
        .iter()
        .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).ok())
        .filter_map(|v| v["data"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "in stored order");

    for (body, word) in [
        (
            json!({"from": "then", "to": to.to_string(), "target": {"topic": "x"}}),
            "from",
        ),
        (
            json!({"from": from.to_string(), "to": to.to_string(), "target": {"subscription": "nobody"}}),
            "nobody",
        ),
        (
            json!({"from": from.to_string(), "to": to.to_string(), "target": {"queue": "x"}}),
            "queue",
        ),
    ] {
        let (status, answer) = router
            .post("/v1/replay", "application/json", body.to_string())
            .await;
        assert!(status == 400 || status == 404, "{body}: {status} {answer}");
        assert!(answer.to_string().contains(word), "{answer}");
    }
    // A body that cannot be read names where it went wrong.
    let (status, answer) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(), "target": {"subscription": "replayed"}, "filter": {"keys": [7]}}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request");
    assert_eq!(
        answer["error"]["details"][0]["path"], "/filter/keys/0",
        "{answer}"
    );
    router.stop().await.expect("clean stop");
}

/// A replay into a subscription of a Dapr app whose health checks find it unhealthy waits
/// for the app (nothing sent, nothing counted as failed) and goes on once it is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_for_an_unhealthy_dapr_app() {
    use std::sync::atomic::Ordering;
    use support::dapr_app::{app_config, dapr_publish_ok, DaprApp};
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let port = support::free_port();
    let app =
        DaprApp::listing(json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]));
    app.healthy.store(true, Ordering::SeqCst);
    app.listen(port).await;
    let mut config = store_config(&redis, &db);
    let mut probed = app_config("probed", port);
    probed.health_check = true;
    probed.health_interval = "100ms".into();
    probed.health_threshold = 2;
    config.dapr.apps = vec![probed];
    let from = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let router = TestRouter::start(config).await;
    let name = eventually(Duration::from_secs(30), async || {
        let subs = router.get_json("/v1/subscriptions").await;
        subs.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .find(|n| n.starts_with("dapr-probed"))
            .map(str::to_string)
            .ok_or_else(|| format!("not read yet: {subs}"))
    })
    .await;
    for n in 0..3 {
        dapr_publish_ok(
            &router,
            "/v1.0/publish/pubsub/orders",
            "application/json",
            json!({ "n": n }).to_string(),
        )
        .await;
    }
    app.wait(Duration::from_secs(30), |hits| hits.len() >= 3)
        .await;
    wait_for_rows(&db, 3).await;
    let to = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(60));

    // Unhealthy (past the threshold), then the replay starts: it waits.
    app.healthy.store(false, Ordering::SeqCst);
    let probes = app.probes.load(Ordering::SeqCst);
    eventually(Duration::from_secs(30), async || {
        match app.probes.load(Ordering::SeqCst) {
            now if now >= probes + 4 => Ok(()),
            now => Err(format!("{} probes", now - probes)),
        }
    })
    .await;
    let (status, started) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "target": {"subscription": name}, "rate": 1000})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    let probes = app.probes.load(Ordering::SeqCst);
    eventually(Duration::from_secs(30), async || {
        match app.probes.load(Ordering::SeqCst) {
            now if now >= probes + 10 => Ok(()),
            now => Err(format!("{} probes", now - probes)),
        }
    })
    .await;
    let waiting = router.get_json(&format!("/v1/replays/{id}")).await;
    assert_eq!(waiting["state"], "running", "{waiting}");
    assert_eq!(
        (waiting["done"].as_u64(), waiting["failed"].as_u64()),
        (Some(0), Some(0)),
        "{waiting}"
    );
    assert_eq!(
        app.on("/orders").len(),
        3,
        "nothing replayed while unhealthy"
    );

    // Healthy again: the replay goes on and ends with every event sent.
    app.healthy.store(true, Ordering::SeqCst);
    let done = replay_status(&router, &id, "done").await;
    assert_eq!(
        (done["done"].as_u64(), done["failed"].as_u64()),
        (Some(3), Some(0)),
        "{done}"
    );
    app.wait(Duration::from_secs(30), |hits| hits.len() >= 6)
        .await;
    router.stop().await.expect("clean stop");
}
