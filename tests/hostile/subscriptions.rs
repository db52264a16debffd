//! A tenant that creates subscriptions without end: its own bound holds under concurrent
//! creations (counted and stored in one step in Redis), the bound in all holds for every
//! principal, and what subscriptions cost (Redis connections, descriptors) is given back
//! when they are deleted.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::process::RouterProcess;
use crate::support::secured::{call, principal};
use crate::support::{
    client, eventually, test_config, AuthConfig, AuthMode, PrincipalConfig, RedisServer, RouterApi,
    TestRouter,
};

const TENANT: &str = "tenant-token";
const OPS: &str = "ops-token";

fn spec(name: &str) -> Value {
    json!({"name": name, "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_cannot_pass_a_principals_bound_nor_the_bound_in_all() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.delivery.max_subscriptions = 8;
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![
            PrincipalConfig {
                subscribe: vec!["order.>".into()],
                max_subscriptions: 5,
                ..principal("tenant", TENANT)
            },
            PrincipalConfig {
                admin: true,
                ..principal("ops", OPS)
            },
        ],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;
    let router = &router;
    let answers = futures_util::future::join_all((0..60).map(|i| async move {
        let answer = call(
            router,
            Method::POST,
            "/v1/subscriptions",
            Some(TENANT),
            Some(spec(&format!("s{i}"))),
            false,
        )
        .await;
        let status = answer.status().as_u16();
        (status, answer.json::<Value>().await.unwrap_or(Value::Null))
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(
        created, 5,
        "statuses of 60 concurrent creations: {statuses:?}"
    );
    for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 403, "{body}");
        assert_eq!(body["error"]["code"], "subscription_limit", "{body}");
    }
    let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("evr:subscriptions")
        .query(&mut redis.conn())
        .expect("stored subscriptions");
    assert_eq!(stored.len(), 5, "exactly five stored: {:?}", stored.keys());
    // Replacing one it owns is not a new one.
    let name = stored.keys().next().expect("one").clone();
    let replaced = call(
        router,
        Method::PUT,
        &format!("/v1/subscriptions/{name}"),
        Some(TENANT),
        Some(spec(&name)),
        false,
    )
    .await;
    assert_eq!(replaced.status(), 200);

    // The bound in all (8) holds for an admin too, by POST and by PUT, at once.
    let answers = futures_util::future::join_all((0..10).map(|i| async move {
        let (method, path) = if i % 2 == 0 {
            (Method::POST, "/v1/subscriptions".to_string())
        } else {
            (Method::PUT, format!("/v1/subscriptions/ops{i}"))
        };
        let answer = call(
            router,
            method,
            &path,
            Some(OPS),
            Some(spec(&format!("ops{i}"))),
            false,
        )
        .await;
        let status = answer.status().as_u16();
        (status, answer.json::<Value>().await.unwrap_or(Value::Null))
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        3,
        "{statuses:?}"
    );
    for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["error"]["code"], "subscription_limit_total", "{body}");
    }
    let count: usize = redis::cmd("HLEN")
        .arg("evr:subscriptions")
        .query(&mut redis.conn())
        .expect("hlen");
    assert_eq!(count, 8);
    router.get_json("/healthz").await;
}

/// Redis connections open now (without the one asking).
fn redis_clients(redis: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .expect("client list");
    list.lines().count().saturating_sub(1)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_subscriptions_give_back_their_connections_and_descriptors() {
    let redis = RedisServer::start();
    let router = RouterProcess::start(&redis, None).await;
    // Settled: the instance's own connections made.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (clients_before, fds_before) = (redis_clients(&redis), descriptors(router.pid()));
    const N: usize = 30;
    for i in 0..N {
        let (status, body) = router.create_subscription(&spec(&format!("s{i}"))).await;
        assert_eq!(status, 201, "{body}");
    }
    eventually(Duration::from_secs(30), async || {
        let clients = redis_clients(&redis);
        (clients >= clients_before + N).then_some(()).ok_or(format!(
            "{clients} Redis connections, {clients_before} before"
        ))
    })
    .await;
    let (clients_full, fds_full) = (redis_clients(&redis), descriptors(router.pid()));
    for i in 0..N {
        let deleted = client()
            .delete(router.url(&format!("/v1/subscriptions/s{i}")))
            .send()
            .await
            .expect("delete");
        assert_eq!(deleted.status(), 204);
    }
    eventually(Duration::from_secs(30), async || {
        let (clients, fds) = (redis_clients(&redis), descriptors(router.pid()));
        (clients <= clients_before + 2 && fds <= fds_before + 4)
            .then_some(())
            .ok_or(format!(
                "{clients} Redis connections ({clients_before} before, {clients_full} with \
                 {N} subscriptions), {fds} descriptors ({fds_before} before, {fds_full} with them)"
            ))
    })
    .await;
    eprintln!(
        "{N} subscriptions: Redis connections {clients_before} -> {clients_full} -> {}, \
         descriptors {fds_before} -> {fds_full} -> {}",
        redis_clients(&redis),
        descriptors(router.pid())
    );
}
