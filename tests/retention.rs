//! Retention: the trimmer trims by age, but never an entry a consumer group has
//! not acked; a stream at its bound blocks publishes or moves what a lagging subscription
//! has not acked to its DLQ (never dropping it silently); a deleted subscription's groups
//! go from every partition, and a new one of the same name starts where it says.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::subscriber::Subscriber;
use support::{
    dlq_entries, eventually, fast_retries, order_event, test_config, RedisServer, RouterApi,
    StreamConfig, TestRouter, WhenFull,
};

fn old_entries(redis: &RedisServer, key: &str, count: usize) {
    let mut conn = redis.conn();
    for i in 0..count {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg(format!("{}-0", 1000 + i))
            .arg("e")
            .arg("old")
            .query(&mut conn)
            .expect("xadd");
    }
}

fn count_old(redis: &RedisServer, key: &str) -> usize {
    let mut conn = redis.conn();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("2000")
        .query(&mut conn)
        .expect("xrange");
    entries.ids.len()
}

fn one_partition_stream(max_age: &str) -> StreamConfig {
    StreamConfig {
        name: "order".into(),
        partitions: 1,
        max_age: max_age.into(),
        ..StreamConfig::default()
    }
}

/// Appends do not trim; the trimmer does, every check. Old entries that appear while
/// evrouter runs (here written straight to Redis, long past `max_age`) are gone within a
/// few checks, and what was published within `max_age` stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_past_max_age_are_trimmed_by_the_checks() {
    let redis = RedisServer::start();
    let key = "evr:{order.0}";
    let mut config = test_config(&redis);
    config.streams.push(one_partition_stream("1h"));
    config.retention.check_interval = "100ms".into();
    let router = TestRouter::start(config).await;
    old_entries(&redis, key, 500);
    router
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
    // `MINID ~` removes whole nodes of 100 entries: most of the old ones go.
    eventually(Duration::from_secs(30), async || {
        match count_old(&redis, key) {
            n if n < 200 => Ok(()),
            n => Err(format!("old entries were not trimmed: {n} left")),
        }
    })
    .await;
    assert_eq!(redis.decodable_entries(key), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_group_has_not_acked_are_never_trimmed() {
    let redis = RedisServer::start();
    let key = "evr:{order.0}";
    old_entries(&redis, key, 500);
    let mut conn = redis.conn();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("shipping")
        .arg("0")
        .query(&mut conn)
        .expect("group");
    // The group reads 300 entries (three stream nodes of 100) and acks all but three,
    // spread over those nodes: the oldest pending one is the floor.
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("shipping")
        .arg("c1")
        .arg("COUNT")
        .arg(300)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query(&mut conn)
        .expect("read");
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    for (i, id) in ids.iter().enumerate() {
        if ![0, 150, 299].contains(&i) {
            let _: i64 = redis::cmd("XACK")
                .arg(key)
                .arg("shipping")
                .arg(id)
                .query(&mut conn)
                .expect("ack");
        }
    }
    let mut config = test_config(&redis);
    config.streams.push(one_partition_stream("1h"));
    config.retention.check_interval = "50ms".into();
    let router = TestRouter::start(config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..20 {
        router
            .publish_ok("order.created", &order_event(n, "o"))
            .await;
    }
    assert_eq!(
        count_old(&redis, key),
        500,
        "pending and unread entries were trimmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_is_applied_when_no_group_lags() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    let mut stream = one_partition_stream("30d");
    stream.max_len = Some(100);
    config.streams.push(stream);
    trimmed_below(&redis, config, 1000, "max_len").await;
}

/// A Redis without `maxmemory` (as the test servers are) is not grown until its machine
/// runs out: the streams' shared bound is then a share of the machine's memory. A share
/// small enough to be a few kilobytes on any machine trims the acknowledged history (here,
/// with no subscription, all of it) well below what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_maxmemory_the_streams_are_bounded_by_the_machines_memory() {
    let redis = RedisServer::start();
    let maxmemory: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut redis.conn())
        .expect("config get");
    assert_eq!(maxmemory.get(1).map(String::as_str), Some("0"));
    let mut config = test_config(&redis);
    config.streams.push(one_partition_stream("30d"));
    config.retention.memory_share = 1e-7;
    trimmed_below(&redis, config, 500, "the memory bound").await;
}

/// Publishes 1,000 events to the one partition of `order` with the trimmer checking every
/// 100 ms, and waits until the partition holds fewer than `below` (`bound` was applied).
async fn trimmed_below(
    redis: &RedisServer,
    mut config: support::Config,
    below: usize,
    bound: &str,
) {
    config.retention.check_interval = "100ms".into();
    let router = TestRouter::start(config).await;
    for n in 0..10 {
        let batch: Vec<_> = (0..100).map(|k| order_event(n * 100 + k, "o")).collect();
        router
            .publish_ok("order.created", &serde_json::Value::Array(batch))
            .await;
    }
    eventually(Duration::from_secs(30), async || {
        let len: usize = redis::cmd("XLEN")
            .arg("evr:{order.0}")
            .query(&mut redis.conn())
            .expect("xlen");
        if len < below {
            Ok(())
        } else {
            Err(format!("{bound} was not applied: {len} entries"))
        }
    })
    .await;
}

/// Published ids from `n` batches of 50 events on `topic`; stops at the first refusal and
/// returns it with the ids accepted before.
async fn publish_until_refused(
    router: &TestRouter,
    topic: &str,
    batches: u64,
) -> (Vec<String>, Option<(u16, serde_json::Value)>) {
    let mut accepted = Vec::new();
    for n in 0..batches {
        let batch: Vec<_> = (0..50)
            .map(|k| order_event(n * 100 + k, &format!("o{k}")))
            .collect();
        let ids: Vec<String> = batch
            .iter()
            .map(|e| e["event_id"].as_str().expect("id").to_string())
            .collect();
        let (status, body) = router
            .publish(topic, &serde_json::Value::Array(batch))
            .await;
        if status != 200 {
            return (accepted, Some((status, body)));
        }
        accepted.extend(ids);
    }
    (accepted, None)
}

fn stream_event_ids(redis: &RedisServer, key: &str) -> HashSet<String> {
    redis
        .all_envelopes()
        .into_iter()
        .filter(|(k, _, _)| k == key)
        .map(|(_, _, envelope)| envelope.event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_at_max_len_blocks_while_a_subscription_lags_then_takes_publishes_again() {
    let mut stream = one_partition_stream("30d");
    stream.max_len = Some(200);
    blocks_at_its_bound(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_at_max_bytes_blocks_while_a_subscription_lags_then_takes_publishes_again() {
    let mut stream = one_partition_stream("30d");
    stream.max_bytes = Some(bytesize::ByteSize::kib(256));
    blocks_at_its_bound(stream).await;
}

/// A lagging subscription blocks `stream` at its bound: 507 store_full for it alone,
/// nothing accepted trimmed, and publishes accepted again once it catches up.
async fn blocks_at_its_bound(stream: StreamConfig) {
    let redis = RedisServer::start();
    let healthy = Arc::new(AtomicBool::new(false));
    let subscriber = {
        let healthy = healthy.clone();
        Subscriber::with_rule(Arc::new(move |_| {
            if healthy.load(Ordering::Relaxed) {
                (200, String::new())
            } else {
                (503, String::new())
            }
        }))
        .await
    };
    let mut config = test_config(&redis);
    config.streams.push(stream);
    config.retention.check_interval = "100ms".into();
    let router = TestRouter::start(config).await;
    router
        .subscribe(
            "shipping",
            &["order.>"],
            &subscriber.url(),
            json!({"max_attempts": 100000, "backoff": fast_retries()}),
        )
        .await;
    let mut accepted = Vec::new();
    let refusal = eventually(Duration::from_secs(20), async || {
        let (ids, refusal) = publish_until_refused(&router, "order.created", 5).await;
        accepted.extend(ids);
        refusal.ok_or_else(|| format!("{} accepted, none refused yet", accepted.len()))
    })
    .await;
    assert_eq!(refusal.0, 507, "{}", refusal.1);
    assert_eq!(refusal.1["error"]["code"], "store_full", "{}", refusal.1);
    // Other streams are not blocked.
    router
        .publish_ok("payment.captured", &order_event(99_999, "o1"))
        .await;
    // Nothing accepted was trimmed.
    let stored = stream_event_ids(&redis, "evr:{order.0}");
    assert!(
        accepted.iter().all(|id| stored.contains(id)),
        "an accepted event was trimmed"
    );
    healthy.store(true, Ordering::Relaxed);
    eventually(Duration::from_secs(30), async || {
        let (_, refusal) = publish_until_refused(&router, "order.created", 1).await;
        match refusal {
            None => Ok(()),
            Some((status, _)) => Err(format!("still refused with {status}")),
        }
    })
    .await;
    let log = subscriber
        .wait_until(Duration::from_secs(30), "every accepted event", |log| {
            let ok: HashSet<&str> = log
                .iter()
                .filter(|r| r.status == 200)
                .map(|r| r.event_id.as_str())
                .collect();
            accepted.iter().all(|id| ok.contains(id.as_str()))
        })
        .await;
    assert!(!log.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_moves_what_a_lagging_subscription_has_not_acked_to_its_dlq() {
    let redis = RedisServer::start();
    let subscriber = Subscriber::with_rule(Arc::new(|_| (503, String::new()))).await;
    let mut config = test_config(&redis);
    let mut stream = one_partition_stream("30d");
    stream.max_len = Some(100);
    stream.when_full = WhenFull::DropOldest;
    config.streams.push(stream);
    config.retention.check_interval = "100ms".into();
    let router = TestRouter::start(config).await;
    router
        .subscribe(
            "shipping",
            &["order.>"],
            &subscriber.url(),
            json!({"max_attempts": 100000, "backoff": fast_retries(), "max_in_flight": 20}),
        )
        .await;
    let (accepted, refusal) = publish_until_refused(&router, "order.created", 20).await;
    assert!(refusal.is_none(), "drop_oldest never refuses: {refusal:?}");
    let key = "evr:{order.0}";
    let moved = eventually(Duration::from_secs(20), async || {
        let len: usize = redis::cmd("XLEN")
            .arg(key)
            .query(&mut redis.conn())
            .expect("xlen");
        let dead = dlq_entries(&redis, "shipping");
        if len <= 300 && !dead.is_empty() {
            Ok(dead)
        } else {
            Err(format!("{len} entries left, {} dead letters", dead.len()))
        }
    })
    .await;
    assert!(moved.iter().all(|d| d["reason"] == "retention"));
    // Every accepted event is still somewhere: in the stream or in the subscription's DLQ.
    let mut found = stream_event_ids(&redis, key);
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("evr:{order.0}:dlq:shipping")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("xrange");
    for entry in dead.ids {
        let bytes: Vec<u8> = entry.get("e").expect("field e");
        found.insert(
            support::Envelope::decode(&bytes)
                .expect("envelope")
                .event_id,
        );
    }
    let missing: Vec<&String> = accepted.iter().filter(|id| !found.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subscriptions_groups_go_everywhere_and_a_new_one_starts_where_it_says() {
    let redis = RedisServer::start();
    let subscriber = Subscriber::ok().await;
    let mut config = test_config(&redis);
    config.streams.push(one_partition_stream("30d"));
    config.retention.check_interval = "100ms".into();
    let router = TestRouter::start(config).await;
    router
        .subscribe("shipping", &["order.>"], &subscriber.url(), json!({}))
        .await;
    assert_eq!(
        router
            .status_of(reqwest::Method::DELETE, "/v1/subscriptions/shipping")
            .await,
        204
    );
    // Events published meanwhile, and a group of that name created again from the start
    // (a reader on another instance that had not heard of the delete).
    router
        .publish_ok("order.created", &order_event(1, "o1"))
        .await;
    let key = "evr:{order.0}";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("shipping")
        .arg("0")
        .query(&mut redis.conn())
        .expect("group");
    eventually(Duration::from_secs(10), async || {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query(&mut redis.conn())
            .expect("groups");
        if groups.groups.is_empty() {
            Ok(())
        } else {
            Err("the orphan group is still there".to_string())
        }
    })
    .await;
    // Created again while an orphan group stands at the beginning: it starts at `latest`.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("shipping")
        .arg("0")
        .query(&mut redis.conn())
        .expect("group");
    router
        .subscribe("shipping", &["order.>"], &subscriber.url(), json!({}))
        .await;
    router
        .publish_ok("order.created", &order_event(2, "o2"))
        .await;
    let log = subscriber.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = subscriber
        .received()
        .iter()
        .map(|r| r.event_id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![log[0].event_id.clone()],
        "only the event after the new start"
    );
    assert_eq!(
        ids[0],
        order_event(2, "o2")["event_id"].as_str().expect("id")
    );
}
