//! Redis failures and shutdown: 503 with Retry-After instead of hangs or false 2xx,
//! recovery when Redis returns, and every acknowledged event present afterwards.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    client, eventually, order_event, test_config, Durability, RedisServer, RouterApi, RunError,
    TestRouter,
};
use serde_json::Value;

/// Eight publishers keep publishing while Redis is killed and restarted: writes in flight
/// at the kill must not be acknowledged unless stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_gives_503s_then_recovers_and_loses_no_acknowledged_event() {
    let _light = crate::support::light().await;
    let mut redis = RedisServer::start_durable();
    let mut config = test_config(&redis);
    config.redis.response_timeout = "500ms".into();
    config.redis.connect_timeout = "200ms".into();
    config.server.publish_timeout = "1s".into();
    let router = TestRouter::start(config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..8u64 {
        let url = router.url("/v1/publish/order.created");
        let stop = stop.clone();
        let refused = refused.clone();
        publishers.push(tokio::spawn(async move {
            let http = client();
            let mut acknowledged = Vec::new();
            let mut n = p * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (0..5)
                    .map(|k| order_event(n + k, &format!("ord_{}", (n + k) % 13)))
                    .collect();
                let response = http
                    .post(&url)
                    .json(&batch)
                    .send()
                    .await
                    .expect("evrouter answers");
                match response.status().as_u16() {
                    200 => acknowledged.extend((0..5).map(|k| format!("evt_order_{}", n + k))),
                    503 => {
                        assert!(response.headers().get("retry-after").is_some());
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected status {other}"),
                }
                n += 5;
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let http = client();
    // A refusal may take a publish timeout (1 s) to come: wait for it, however slow the
    // machine.
    eventually(Duration::from_secs(30), async || {
        let ready = http
            .get(router.url("/readyz"))
            .send()
            .await
            .map_err(|err| err.to_string())?;
        match (ready.status().as_u16(), refused.load(Ordering::Relaxed)) {
            (503, n) if n > 0 => Ok(()),
            (status, n) => Err(format!("readyz {status}, {n} publishes refused")),
        }
    })
    .await;
    redis.restart();
    // Wait until publishing works again, then stop.
    let mut recovered = false;
    for n in 0..100u64 {
        let response = http
            .post(router.url("/v1/publish/order.created"))
            .json(&order_event(9_000_000 + n, "ord_r"))
            .send()
            .await
            .expect("answer");
        if response.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "publishing did not recover after Redis returned");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged: HashSet<String> = HashSet::new();
    for publisher in publishers {
        acknowledged.extend(publisher.await.expect("publisher"));
    }
    let ready = http
        .get(router.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let stored: HashSet<String> = redis
        .all_envelopes()
        .into_iter()
        .map(|(_, _, e)| e.event_id)
        .collect();
    let missing: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_fills_the_bounded_queue_and_publishers_get_503_not_a_hang() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.writer.writers = 1;
    config.writer.queue_capacity = 1;
    config.redis.response_timeout = "1s".into();
    config.server.publish_timeout = "2s".into();
    let router = TestRouter::start(config).await;
    router
        .publish_ok("order.created", &order_event(0, "o"))
        .await;
    redis.signal("STOP");
    let mut tasks = Vec::new();
    for n in 1..=20u64 {
        let url = router.url("/v1/publish/order.created");
        tasks.push(tokio::spawn(async move {
            let response = client()
                .post(url)
                .json(&order_event(n, "o"))
                .send()
                .await
                .expect("answer");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        let (status, code) = task.await.expect("task");
        assert_eq!(status, 503, "a stalled Redis never yields 2xx");
        codes.push(code);
    }
    assert!(
        codes.iter().any(|c| c == "overloaded"),
        "queue full is reported: {codes:?}"
    );
    redis.signal("CONT");
    // After Redis resumes, publishing works again.
    let mut ok = false;
    for n in 100..150u64 {
        if router
            .publish("order.created", &order_event(n, "o"))
            .await
            .0
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_publishes_and_flushes_writers() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let mut tasks = Vec::new();
    let answered = Arc::new(AtomicUsize::new(0));
    for t in 0..8u64 {
        let url = router.url("/v1/publish/order.created");
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut acknowledged = Vec::new();
            for i in 0..200u64 {
                let n = t * 1000 + i;
                let batch: Vec<Value> = (0..10).map(|k| order_event(n * 10 + k, "o")).collect();
                match http.post(&url).json(&batch).send().await {
                    Ok(response) if response.status() == 200 => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        acknowledged.extend((0..10).map(|k| format!("evt_order_{}", n * 10 + k)))
                    }
                    Ok(response) => assert_eq!(response.status(), 503),
                    Err(_) => break, // listener closed
                }
            }
            acknowledged
        }));
    }
    // Shut down while publishes are being answered.
    eventually(Duration::from_secs(30), async || {
        match answered.load(Ordering::Relaxed) {
            0 => Err("no publish answered yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    router.stop().await.expect("clean stop");
    let mut acknowledged = HashSet::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("task"));
    }
    assert!(!acknowledged.is_empty());
    let stored: HashSet<String> = redis
        .all_envelopes()
        .into_iter()
        .map(|(_, _, e)| e.event_id)
        .collect();
    assert!(
        acknowledged.is_subset(&stored),
        "an acknowledged event is missing after shutdown"
    );
}

/// Requests in flight when shutdown starts (held there by a paused Redis) are answered
/// once Redis resumes within the grace period, and what they were told is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_requests_that_are_in_flight() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.redis.response_timeout = "30s".into();
    config.server.publish_timeout = "30s".into();
    let router = TestRouter::start(config).await;
    router
        .publish_ok("order.created", &order_event(0, "o"))
        .await;
    redis.signal("STOP");
    let mut requests = Vec::new();
    for n in 1..=10u64 {
        let url = router.url("/v1/publish/order.created");
        requests.push(tokio::spawn(async move {
            let response = client().post(url).json(&order_event(n, "o")).send().await;
            response.map(|r| r.status().as_u16())
        }));
    }
    // Every request has reached evrouter (they wait on the paused Redis) before shutdown
    // begins; a slow machine gets two seconds for that.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopping = tokio::spawn(router.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.signal("CONT");
    let mut acknowledged = 0;
    for request in requests {
        let status = request
            .await
            .expect("task")
            .expect("an HTTP answer, not a cut connection");
        assert_eq!(status, 200);
        acknowledged += 1;
    }
    stopping.await.expect("join").expect("clean stop");
    assert_eq!(redis.all_envelopes().len(), 1 + acknowledged);
}

/// Shutdown is noticed while every connection slot is taken (the accept loop waits for a
/// slot): with the only slot held by a client that never sends a request, evrouter still
/// stops well within its budget and long before that client's header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_noticed_while_every_connection_slot_is_taken() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.server.max_connections = 1;
    config.server.header_read_timeout = "120s".into();
    config.server.shutdown_budget = "2s".into();
    let router = TestRouter::start(config).await;
    let address = router.base.trim_start_matches("http://").to_string();
    // One client holds the only slot without sending anything; a second waits for a slot.
    let _idle = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _waiting = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), router.stop()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "evrouter did not stop while its connection slots were taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_refuses_a_redis_without_fsync_always() {
    let _light = crate::support::light().await;
    let lossy = RedisServer::start();
    let mut config = test_config(&lossy);
    config.redis.durability = Durability::Strict;
    let router = TestRouter::start(config).await;
    let result = router.stop().await;
    assert!(matches!(result, Err(RunError::NotDurable(_))), "{result:?}");

    let durable = RedisServer::start_durable();
    let mut config = test_config(&durable);
    config.redis.durability = Durability::Strict;
    let router = TestRouter::start(config).await;
    router
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
    router.stop().await.expect("starts and stops");
}
