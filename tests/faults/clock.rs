//! Clock skew between instances: the instance registry is stamped with Redis's clock, so an
//! instance whose clock runs an hour ahead, killed, loses its partitions to the others
//! within the lease TTL (with its own clock's stamps it would have looked alive for an hour,
//! its partitions unowned). The skewed clock comes from libfaketime (Debian's `faketime`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::process::RouterProcess;
use crate::support::subscriber::{distinct_events, Subscriber};
use crate::support::{keyed_event, wait_for_holders, RedisServer, RouterApi};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_clock_runs_ahead_loses_its_partitions_when_it_dies() {
    let _heavy = crate::support::heavy().await;
    let redis = RedisServer::start();
    let subscriber = Subscriber::start(Arc::new(|_| (200, String::new())), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nlease_ttl = \"1s\"\n\n[[subscriptions]]\nname = \"fulfillment\"\ntopics = [\"order.>\"]\nendpoints = [\"{}\"]\n",
            subscriber.url()
        ),
    )
    .expect("config");
    let ahead = RouterProcess::start_with_clock(&redis, Some(&config), "+1h").await;
    let normal = RouterProcess::start(&redis, Some(&config)).await;
    // Both hold leases.
    wait_for_holders(&redis, 2, "both instances should hold leases").await;
    ahead.signal("KILL");
    let mut published: HashMap<String, u64> = HashMap::new();
    for seq in 0..20u64 {
        let batch: Vec<Value> = (0..20)
            .map(|k| {
                let key = format!("ord_{k}");
                *published.entry(key.clone()).or_default() += 1;
                keyed_event(seq * 100 + k, &key, seq)
            })
            .collect();
        normal
            .publish_ok("order.created", &Value::Array(batch))
            .await;
    }
    let total: u64 = published.values().sum();
    subscriber
        .wait_until(Duration::from_secs(30), "every event", |log| {
            distinct_events(log) as u64 >= total
        })
        .await;
    assert_eq!(
        redis
            .lease_holders()
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1,
        "the survivor holds every lease"
    );
}
