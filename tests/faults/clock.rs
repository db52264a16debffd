//! Clock skew between instances: the instance registry is stamped with Redis's clock, so an
//! instance whose clock runs an hour ahead, killed, loses its partitions to the others
//! within the lease TTL (with its own clock's stamps it would have looked alive for an hour,
//! its partitions unowned). And an instance whose clock jumps past its leases' local
//! validity (as a starved or suspended process sees it) pauses and goes on under the same
//! tenure once Redis confirms it still holds them: nothing is let go, so no sequence gap
//! opens. The skewed clock comes from libfaketime (Debian's `faketime`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::process::RouterProcess;
use crate::support::proxy::Proxy;
use crate::support::subscriber::{distinct_events, Received, Subscriber};
use crate::support::{eventually, keyed_event, wait_for_holders, RedisServer, RouterApi};

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

/// The instance's clock jumps by the whole lease TTL while its link to Redis stalls: every
/// lease lapses locally with requests queued in its lanes and acks waiting to be written.
/// Once the link heals, Redis confirms the leases were its own all along: the lanes go on
/// under the same tenure. Nothing was let go, so nothing is read twice or restored from a
/// stale number; every event arrives once, in sequence, and no gap opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_lapses_locally_is_renewed_without_letting_anything_go() {
    let _heavy = crate::support::heavy().await;
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let subscriber = Subscriber::start(
        Arc::new(|_: &Received| (200, String::new())),
        Some(Duration::from_millis(100)),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("evrouter.toml");
    // Request timeouts far beyond the jump: a request in flight is answered, not timed out.
    std::fs::write(
        &config,
        format!(
            "[redis]\nresponse_timeout = \"500ms\"\n\n[delivery]\nlease_ttl = \"20s\"\n\n[[subscriptions]]\nname = \"ledger\"\ntopics = [\"order.>\"]\nendpoints = [\"{}\"]\ntimeout_ms = 60000\nordering = \"sequence\"\nreorder = {{ timeout_ms = 60000, on_timeout = \"dead_letter\" }}\n",
            subscriber.url()
        ),
    )
    .expect("config");
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "+0\n").expect("clock file");
    let router = RouterProcess::start_with_clock_file(&proxy.url(), Some(&config), &clock).await;
    wait_for_holders(&redis, 1, "the instance should hold its leases").await;
    let keys = 30u64;
    let publish = async |rounds: std::ops::Range<u64>, pause: Duration| {
        for seq in rounds {
            let batch: Vec<Value> = (0..keys)
                .map(|k| {
                    let mut event = keyed_event(seq * 1000 + k, &format!("ord_{k}"), seq);
                    event["metadata"]["sequence"] = serde_json::json!(seq + 1);
                    event
                })
                .collect();
            router
                .publish_ok("order.created", &Value::Array(batch))
                .await;
            tokio::time::sleep(pause).await;
        }
    };
    publish(0..10, Duration::from_millis(20)).await;
    // A burst the 100 ms subscriber needs seconds for: lanes are full when the link stalls.
    publish(10..40, Duration::ZERO).await;
    proxy.stall();
    // A jump of the whole TTL: every local validity (80% of it) lapses, while in Redis
    // the leases run a full TTL from their last renewal, well past the stall.
    std::fs::write(&clock, "+20\n").expect("clock jump");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    proxy.heal();
    let lapsed = "lease renewed after its local validity lapsed";
    eventually(Duration::from_secs(20), async || {
        if router.log().contains(lapsed) {
            Ok(())
        } else {
            Err("no lease renewed after a lapse yet".to_string())
        }
    })
    .await;
    publish(40..60, Duration::from_millis(20)).await;
    let total = (keys * 60) as usize;
    subscriber
        .wait_until(Duration::from_secs(60), "every event", |log| {
            distinct_events(log) >= total
        })
        .await;
    // Each event arrived once (nothing was let go and read again), per key in sequence.
    let log = subscriber.received();
    assert_eq!(log.len(), total, "an event was delivered twice");
    let mut by_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in &log {
        by_key
            .entry(r.key.as_str())
            .or_default()
            .push(r.seq.expect("seq"));
    }
    for (key, seqs) in by_key {
        assert_eq!(seqs, (0..60).collect::<Vec<_>>(), "{key} out of sequence");
    }
    let stats = router.stats().await["subscriptions"]["ledger"]["sequence"].clone();
    assert_eq!(stats["gaps_opened"], 0, "{stats}");
    assert!(
        !router.log().contains("lease lost"),
        "the leases were held in Redis all along"
    );
}
