//! Parts that panic: a panic in a writer, an acker or a delivery shard is caught, logged
//! and counted; the part is named by `/readyz` while it is down and goes on once a round
//! completes; nothing acknowledged is lost (an acker that panicked writes its acks once it
//! can); and the instance reports every panic when it stops. The panics are real, raised by
//! fail points compiled into test builds only.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::subscriber::{distinct_events, Subscriber};
use crate::support::{eventually, order_event, test_config, RedisServer, RouterApi, TestRouter};

/// Removes every fail point this test armed, even when it fails.
struct Armed(&'static [&'static str]);

impl Drop for Armed {
    fn drop(&mut self) {
        for point in self.0 {
            fail::remove(point);
        }
    }
}

async fn readyz(router: &TestRouter) -> (u16, String) {
    let response = reqwest::get(format!("{}/readyz", router.base()))
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Publishes one event until it is acknowledged (a writer's batch that panicked answers
/// 503 and stores nothing); returns its id.
async fn publish_until_stored(router: &TestRouter, n: u64) -> String {
    let event = order_event(n, &format!("ord_{}", n % 7));
    let id = event["event_id"].as_str().expect("id").to_string();
    eventually(Duration::from_secs(20), async || {
        match router.publish("order.created", &event).await {
            (200, _) => Ok(()),
            (503, _) => Err("503".to_string()),
            (other, body) => panic!("publish answered {other}: {body}"),
        }
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_that_panic_are_restarted_named_by_readyz_and_reported_at_stop() {
    // Fail points are global to this process: no other test may run meanwhile.
    let _heavy = crate::support::heavy().await;
    let _armed = Armed(&["acker-flush", "shard-dispatch", "writer-flush"]);
    let redis = RedisServer::start();
    let subscriber = Subscriber::ok().await;
    let router = TestRouter::start(test_config(&redis)).await;
    router
        .subscribe(
            "shipping",
            &["order.>"],
            &subscriber.url(),
            serde_json::json!({}),
        )
        .await;

    // Every ack write panics: events are delivered, their acks are not written, and the
    // acker is named until the fail point is removed.
    fail::cfg("acker-flush", "panic").expect("arm");
    let mut stored = HashSet::new();
    for n in 0..20 {
        stored.insert(publish_until_stored(&router, n).await);
    }
    subscriber.wait_for(20, Duration::from_secs(20)).await;
    eventually(Duration::from_secs(20), async || {
        match readyz(&router).await {
            (503, body) if body.contains("part_down") && body.contains("acker:shipping") => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(redis.pending("shipping"), 20, "no ack can be written yet");
    fail::remove("acker-flush");
    eventually(Duration::from_secs(30), async || {
        match readyz(&router).await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    eventually(Duration::from_secs(30), async || {
        match redis.pending("shipping") {
            0 => Ok(()),
            n => Err(format!(
                "{n} entries still pending: the panicked acks were dropped"
            )),
        }
    })
    .await;

    // A shard whose turn panics twice and a writer whose batch panics once.
    fail::cfg("shard-dispatch", "2*panic").expect("arm");
    fail::cfg("writer-flush", "1*panic").expect("arm");
    for n in 20..40 {
        stored.insert(publish_until_stored(&router, n).await);
    }
    subscriber
        .wait_until(Duration::from_secs(30), "every stored event", |log| {
            distinct_events(log) >= stored.len()
        })
        .await;
    let delivered: HashSet<String> = subscriber
        .received()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert!(
        stored.is_subset(&delivered),
        "a stored event was not delivered"
    );
    eventually(Duration::from_secs(30), async || {
        match redis.pending("shipping") {
            0 => Ok(()),
            n => Err(format!("{n} entries still pending")),
        }
    })
    .await;

    let stopped = router.stop().await;
    let Err(evrouter::RunError::Panicked(parts)) = stopped else {
        panic!("the panics should be reported at stop, got {stopped:?}");
    };
    for part in ["acker:shipping", "shard:shipping:", "writer-"] {
        assert!(parts.contains(part), "{part} missing from {parts}");
    }
}
