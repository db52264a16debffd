//! Retention: XADD trims by age, but never an entry a consumer group has not acked.

mod support;

use std::time::Duration;

use support::{
    eventually, order_event, test_config, RedisServer, RouterApi, StreamConfig, TestRouter,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_past_max_age_are_trimmed_on_append() {
    let redis = RedisServer::start();
    let key = "evr:{order.0}";
    old_entries(&redis, key, 500);
    let mut config = test_config(&redis);
    config.streams.push(one_partition_stream("1h"));
    let router = TestRouter::start(config).await;
    router
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
    // `MINID ~` removes whole nodes of 100 entries: most of the old ones go.
    assert!(count_old(&redis, key) < 200, "old entries were not trimmed");
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
    // The group reads 50 entries and acks none: they are pending from the oldest on.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("shipping")
        .arg("c1")
        .arg("COUNT")
        .arg(50)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query(&mut conn)
        .expect("read");
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
    let key = "evr:{order.0}";
    let mut config = test_config(&redis);
    let mut stream = one_partition_stream("30d");
    stream.max_len = Some(100);
    config.streams.push(stream);
    config.retention.check_interval = "100ms".into();
    let router = TestRouter::start(config).await;
    for n in 0..10 {
        let batch: Vec<_> = (0..100).map(|k| order_event(n * 100 + k, "o")).collect();
        router
            .publish_ok("order.created", &serde_json::Value::Array(batch))
            .await;
    }
    eventually(Duration::from_secs(5), async || {
        let len: usize = redis::cmd("XLEN")
            .arg(key)
            .query(&mut redis.conn())
            .expect("xlen");
        if len < 1000 {
            Ok(())
        } else {
            Err(format!("max_len was not applied: {len} entries"))
        }
    })
    .await;
}
