//! Many subscriptions: evrouter's connections to Redis stay within the stated bound,
//! `10 + writer.writers + subscriptions × (2 + 2 × delivery.readers)` (see
//! docs/operations.md), not one per partition or per request.

use std::time::Duration;

use crate::support::subscriber::Subscriber;
use crate::support::{eventually, test_config, RedisServer, RouterApi, TestRouter};

fn clients(redis: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .expect("client list");
    // Less the connection asking.
    list.lines().count() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_redis_stay_within_the_bound_with_many_subscriptions() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let subscriber = Subscriber::ok().await;
    let config = test_config(&redis);
    let (writers, readers) = (config.writer.writers, config.delivery.readers);
    let router = TestRouter::start(config).await;
    let subscriptions = 40;
    for n in 0..subscriptions {
        router
            .subscribe(
                &format!("sub-{n}"),
                &["order.>", "payment.>"],
                &subscriber.url(),
                serde_json::json!({}),
            )
            .await;
    }
    // Every worker has started once every subscription has its group on every partition
    // and each worker's readers are reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bound = 10 + writers + subscriptions * (2 + 2 * readers);
    eventually(Duration::from_secs(10), async || {
        let now = clients(&redis);
        if now <= bound && now > subscriptions {
            Ok(())
        } else {
            Err(format!("{now} connections, bound {bound}"))
        }
    })
    .await;
}
