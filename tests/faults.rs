//! Redis failures and shutdown: 503 with Retry-After instead of hangs or false 2xx,
//! recovery when Redis returns, and every acknowledged event present afterwards.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use evrouter::config::Durability;
use serde_json::Value;
use support::{client, order_event, test_config, RedisServer, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_gives_503s_then_recovers_and_loses_no_acknowledged_event() {
    let mut redis = RedisServer::start_durable();
    let mut config = test_config(&redis);
    config.redis.response_timeout = "500ms".into();
    config.redis.connect_timeout = "200ms".into();
    config.server.publish_timeout = "1s".into();
    let router = TestRouter::start(config).await;
    let http = client();
    let url = router.url("/v1/publish/order.created");

    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut refused = 0;
    let mut n = 0u64;
    let publish = |n: u64| {
        let request = http
            .post(&url)
            .json(&order_event(n, &format!("ord_{}", n % 13)));
        async move {
            let response = request.send().await.expect("evrouter answers");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }
    };
    // Phase 1: Redis up.
    for _ in 0..50 {
        let (status, _, _) = publish(n).await;
        assert_eq!(status, 200);
        acknowledged.insert(format!("evt_order_{n}"));
        n += 1;
    }
    // Phase 2: Redis killed; every answer is 503 with Retry-After, never 2xx.
    redis.kill();
    for _ in 0..20 {
        let (status, retry_after, body) = publish(n).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after);
        assert_eq!(body["error"]["code"], "store_unavailable");
        refused += 1;
        n += 1;
    }
    let ready = http
        .get(router.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    // Phase 3: Redis back (same data folder, AOF replayed); publishes succeed again.
    redis.restart();
    let mut recovered = false;
    for _ in 0..200 {
        let (status, _, _) = publish(n).await;
        match status {
            200 => {
                acknowledged.insert(format!("evt_order_{n}"));
                recovered = true;
            }
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
        n += 1;
        if recovered && acknowledged.len() >= 100 {
            break;
        }
        if !recovered {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(recovered, "publishing did not recover after Redis returned");
    assert!(refused >= 20);
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
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.writer.writers = 1;
    config.writer.queue_capacity = 1;
    config.redis.response_timeout = "1s".into();
    config.server.publish_timeout = "2s".into();
    let router = TestRouter::start(config).await;
    assert_eq!(
        router
            .publish("order.created", &order_event(0, "o"))
            .await
            .0,
        200
    );
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
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let url = router.url("/v1/publish/order.created");
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut acknowledged = Vec::new();
            for i in 0..200u64 {
                let n = t * 1000 + i;
                let batch: Vec<Value> = (0..10).map(|k| order_event(n * 10 + k, "o")).collect();
                match http.post(&url).json(&batch).send().await {
                    Ok(response) if response.status() == 200 => {
                        acknowledged.extend((0..10).map(|k| format!("evt_order_{}", n * 10 + k)))
                    }
                    Ok(response) => assert_eq!(response.status(), 503),
                    Err(_) => break, // listener closed
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_durability_refuses_a_redis_without_fsync_always() {
    let lossy = RedisServer::start();
    let mut config = test_config(&lossy);
    config.redis.durability = Durability::Strict;
    let router = TestRouter::start(config).await;
    let result = router.stop().await;
    assert!(
        matches!(result, Err(evrouter::RunError::NotDurable(_))),
        "{result:?}"
    );

    let durable = RedisServer::start_durable();
    let mut config = test_config(&durable);
    config.redis.durability = Durability::Strict;
    let router = TestRouter::start(config).await;
    assert_eq!(
        router
            .publish("order.created", &order_event(1, "o"))
            .await
            .0,
        200
    );
    router.stop().await.expect("starts and stops");
}
