//! Dapr app health checks (`health_check = true` in `[[dapr.apps]]`): nothing is delivered
//! to an app before its first good probe, nor after `health_threshold` failed probes in a
//! row; its events wait (no attempt counted, nothing dead-lettered) and go to it once a
//! probe succeeds again. Over HTTP (`GET /health`) with a Rust app, and over gRPC
//! (`AppCallbackHealthCheck/HealthCheck`) with the real Python SDK's `dapr-ext-grpc` app.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::dapr_app::{app_config, dapr_publish_ok, DaprApp};
use support::{
    dlq_entries, eventually, free_port, test_config, AppProtocol, DaprAppConfig, RedisServer,
    RouterApi, TestRouter,
};

/// The app's health settings for the tests: probes every 100 ms, unhealthy after 2
/// failures in a row; one attempt per event, so a counted attempt would dead-letter.
fn checked(mut app: DaprAppConfig) -> DaprAppConfig {
    app.health_check = true;
    app.health_interval = "100ms".into();
    app.health_timeout = "500ms".into();
    app.health_threshold = 2;
    app.max_attempts = 1;
    app
}

/// The names of the subscriptions read from app `id`, once there are `n`.
async fn app_subscriptions(router: &TestRouter, id: &str, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(30), async || {
        let subs = router.get_json("/v1/subscriptions").await;
        let names: Vec<String> = subs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .filter(|name| name.starts_with(&format!("dapr-{id}")))
            .map(str::to_string)
            .collect();
        if names.len() == n {
            Ok(names)
        } else {
            Err(format!("{} subscriptions of {id}: {subs}", names.len()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_http_app_gets_nothing_until_its_probe_succeeds() {
    // Alone in this binary: it measures the process's CPU while the app is paused.
    let _alone = support::heavy().await;
    let redis = RedisServer::start();
    let port = free_port();
    let app = DaprApp::listing(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {"pubsubname": "pubsub", "topic": "bulky", "route": "/bulk",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 20}}
    ]));
    app.listen(port).await;
    let mut config = test_config(&redis);
    config.dapr.apps = vec![checked(app_config("probed", port))];
    let router = TestRouter::start(config).await;
    let names = app_subscriptions(&router, "probed", 2).await;
    let publish_to = |topic: &'static str, n: u64| {
        let router = &router;
        async move {
            dapr_publish_ok(
                router,
                &format!("/v1.0/publish/pubsub/{topic}"),
                "application/json",
                json!({ "n": n }).to_string(),
            )
            .await
        }
    };
    let publish = |n: u64| publish_to("orders", n);
    // Read by their subscriptions (pending in Redis), whether delivered or not.
    let read = |n: u64| {
        let (redis, names) = (&redis, &names);
        async move {
            eventually(Duration::from_secs(30), async || {
                let pending: u64 = names.iter().map(|g| redis.pending_anywhere(g)).sum();
                if pending >= n {
                    Ok(())
                } else {
                    Err(format!("{pending} read of {n}"))
                }
            })
            .await
        }
    };
    let probes_past = |n: usize| {
        let app = &app;
        async move {
            let from = app.probes.load(Ordering::SeqCst);
            eventually(Duration::from_secs(30), async || {
                match app.probes.load(Ordering::SeqCst) {
                    now if now >= from + n => Ok(()),
                    now => Err(format!("{} probes of {n}", now - from)),
                }
            })
            .await
        }
    };
    let delivered = |app: &DaprApp| -> Vec<u64> {
        app.on("/orders")
            .iter()
            .filter_map(|hit| hit.json()["data"]["n"].as_u64())
            .collect()
    };

    let health_metric = || async {
        let text = support::client()
            .get(router.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find(|l| l.starts_with("evrouter_dapr_app_healthy{app=\"probed\"}"))
            .map(str::to_string)
            .unwrap_or_default()
    };

    // Never healthy yet: the events are read and wait however many probes fail, and the
    // waiting subscriptions (one of them bulk) do not spin.
    publish(1).await;
    publish_to("bulky", 10).await;
    read(2).await;
    let (cpu_before, wall_before) = (process_cpu(), std::time::Instant::now());
    probes_past(8).await;
    let (cpu, wall) = (
        process_cpu() - cpu_before,
        wall_before.elapsed().as_secs_f64(),
    );
    assert!(app.hits().is_empty(), "nothing before a good probe");
    assert!(
        cpu < 0.5 * wall,
        "waiting costs little: {cpu:.2} s of CPU in {wall:.2} s"
    );
    assert!(
        health_metric().await.ends_with(" 0"),
        "{}",
        health_metric().await
    );

    // One good probe: they go, once, not dead-lettered.
    app.healthy.store(true, Ordering::SeqCst);
    app.wait(Duration::from_secs(30), |hits| hits.len() >= 2)
        .await;
    assert_eq!(app.on("/bulk").len(), 1, "the bulk subscription's event");
    publish(2).await;
    app.wait(Duration::from_secs(30), |hits| hits.len() >= 3)
        .await;
    assert!(
        health_metric().await.ends_with(" 1"),
        "{}",
        health_metric().await
    );

    // Unhealthy again (past the threshold): new events wait, then go when it is back.
    app.healthy.store(false, Ordering::SeqCst);
    probes_past(4).await;
    publish(3).await;
    probes_past(8).await;
    assert_eq!(delivered(&app), [1, 2], "nothing while unhealthy");
    app.healthy.store(true, Ordering::SeqCst);
    app.wait(Duration::from_secs(30), |hits| hits.len() >= 4)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered(&app), [1, 2, 3], "each once, in order");
    for name in &names {
        assert!(
            dlq_entries(&redis, name).is_empty(),
            "waiting is not an attempt"
        );
    }
    router.stop().await.expect("stop");
}

/// CPU seconds this process has used (user and system), from `/proc/self/stat`.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // Linux reports these in clock ticks of 1/100 s (USER_HZ).
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_grpc_app_gets_nothing_until_its_health_check_succeeds() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let app_port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let results_path = dir.path().join("results.json");
    let health_file = dir.path().join("healthy");
    let _app = support::dapr_py::start_app(app_port, &results_path, Some(&health_file)).await;
    let mut config = test_config(&redis);
    config.dapr.apps = vec![checked(DaprAppConfig {
        id: "py-probed".into(),
        url: format!("http://127.0.0.1:{app_port}"),
        protocol: AppProtocol::Grpc,
        ..DaprAppConfig::default()
    })];
    config.dapr.refresh_interval = "1s".into();
    let router = TestRouter::start(config).await;
    let names = app_subscriptions(&router, "py-probed", 6).await;
    let probes = || {
        support::dapr_py::results(&results_path)["probes"]
            .as_u64()
            .unwrap_or(0)
    };
    let probes_past = |n: u64| {
        let probes = &probes;
        async move {
            let from = probes();
            eventually(Duration::from_secs(30), async || match probes() {
                now if now >= from + n => Ok(()),
                now => Err(format!("{} probes of {n}", now - from)),
            })
            .await
        }
    };
    let orders = || {
        support::dapr_py::results(&results_path)["orders"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let publish = |n: u64| {
        let router = &router;
        async move {
            dapr_publish_ok(
                router,
                "/v1.0/publish/pubsub/orders",
                "application/json",
                json!({ "order_id": format!("ord-h{n}") }).to_string(),
            )
            .await
        }
    };

    publish(1).await;
    probes_past(8).await;
    assert_eq!(orders(), 0, "nothing before a good health check");
    let orders_reach = |n: usize| {
        let orders = &orders;
        async move {
            eventually(Duration::from_secs(30), async || match orders() {
                got if got == n => Ok(()),
                got => Err(format!("{got} orders of {n}")),
            })
            .await
        }
    };
    std::fs::write(&health_file, b"ok").expect("healthy");
    orders_reach(1).await;

    std::fs::remove_file(&health_file).expect("unhealthy");
    probes_past(4).await;
    publish(2).await;
    probes_past(8).await;
    assert_eq!(orders(), 1, "nothing while unhealthy");
    std::fs::write(&health_file, b"ok").expect("healthy again");
    orders_reach(2).await;
    for name in &names {
        assert!(
            dlq_entries(&redis, name).is_empty(),
            "waiting is not an attempt"
        );
    }
    router.stop().await.expect("stop");
}
