//! Redis with `appendfsync everysec` killed and restarted: what evrouter acknowledged and
//! Redis had fsynced (everything older than about a second) is there after the restart;
//! only the last second of acknowledged events may be lost, which `durability = "warn"`
//! says at start-up and `"strict"` refuses.

use std::time::Duration;

use crate::support::{order_event, test_config, RedisServer, RouterApi, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everysec_keeps_what_was_fsynced_and_loses_at_most_the_last_second() {
    let _light = crate::support::light().await;
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]);
    let router = TestRouter::start(test_config(&redis)).await;
    let mut fsynced = Vec::new();
    for n in 0..200u64 {
        let event = order_event(n, &format!("ord_{}", n % 7));
        router.publish_ok("order.created", &event).await;
        fsynced.push(event["event_id"].as_str().expect("id").to_string());
    }
    // Past the next fsync.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut recent = 0;
    for n in 200..260u64 {
        router
            .publish_ok("order.created", &order_event(n, &format!("ord_{}", n % 7)))
            .await;
        recent += 1;
    }
    redis.restart();
    let stored: std::collections::HashSet<String> = redis
        .all_envelopes()
        .into_iter()
        .map(|(_, _, envelope)| envelope.event_id)
        .collect();
    let missing: Vec<&String> = fsynced.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "fsynced events lost: {missing:?}");
    let kept_recent = stored.len() - fsynced.len();
    eprintln!("of {recent} events acknowledged in the last second, {kept_recent} survived");
    drop(router);
}
