//! The network between an instance and Redis fails while deliveries and their acks are in
//! flight (a proxy that resets every connection, or holds every byte): publishes in the
//! meantime get 503s, never a false 200; once it heals, every acknowledged event is
//! delivered and nothing is left pending.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::proxy::Proxy;
use crate::support::subscriber::{distinct_successes, Subscriber};
use crate::support::{eventually, order_event, test_config, RedisServer, RouterApi, TestRouter};

async fn cut_or_stall(stall: bool) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    // Slow answers keep requests and their acks in flight when the link fails.
    let subscriber = Subscriber::start(
        Arc::new(|_| (200, String::new())),
        Some(Duration::from_millis(50)),
    )
    .await;
    let mut config = test_config(&redis);
    config.redis.url = proxy.url();
    config.redis.response_timeout = "500ms".into();
    config.redis.connect_timeout = "200ms".into();
    config.server.publish_timeout = "1s".into();
    config.delivery.lease_ttl = "3s".into();
    let router = TestRouter::start(config).await;
    router
        .subscribe(
            "shipping",
            &["order.>"],
            &subscriber.url(),
            serde_json::json!({}),
        )
        .await;
    let mut acknowledged = HashSet::new();
    let mut refused = 0;
    for n in 0..300u64 {
        if n == 100 {
            if stall {
                proxy.stall();
            } else {
                proxy.cut();
            }
        }
        if n == 200 {
            proxy.heal();
        }
        let event = order_event(n, &format!("ord_{}", n % 17));
        let (status, _) = router.publish("order.created", &event).await;
        match status {
            200 => {
                acknowledged.insert(event["event_id"].as_str().expect("id").to_string());
            }
            503 => refused += 1,
            other => panic!("publish answered {other}"),
        }
        if (100..200).contains(&n) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(refused > 0, "the link failure was not noticed");
    subscriber
        .wait_until(Duration::from_secs(60), "every acknowledged event", |log| {
            let ok: HashSet<&str> = log
                .iter()
                .filter(|r| r.status == 200)
                .map(|r| r.event_id.as_str())
                .collect();
            acknowledged.iter().all(|id| ok.contains(id.as_str()))
        })
        .await;
    eventually(Duration::from_secs(30), async || {
        let pending = redis.pending("shipping");
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} entries still pending"))
        }
    })
    .await;
    assert!(distinct_successes(&subscriber.received()) >= acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_to_redis_loses_no_acknowledged_event() {
    let _light = crate::support::light().await;
    cut_or_stall(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_to_redis_loses_no_acknowledged_event() {
    let _light = crate::support::light().await;
    cut_or_stall(true).await;
}
