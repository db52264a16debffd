//! The listeners against connections that hold on and say nothing: silent TCP connections
//! and half HTTP/2 prefaces to the Dapr gRPC port, more of them than the connection cap,
//! no token needed. evrouter closes them (preface timeout, idle timeout), they hold only
//! slots of the cap shared with HTTP, and health checks and publishes go through.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    client, eventually, free_port, order_event, test_config, RedisServer, RouterApi, TestRouter,
};

/// The client's HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Whether evrouter closes `conn` (end of stream or a reset) before `within`; whatever
/// evrouter writes first (its SETTINGS, a GOAWAY) is read and skipped.
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let reading = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, reading).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_grpc_connections_are_closed_and_the_service_goes_on() {
    let redis = RedisServer::start();
    let grpc_port = free_port();
    let mut config = test_config(&redis);
    config.dapr.grpc_listen = format!("127.0.0.1:{grpc_port}");
    config.server.max_connections = 40;
    config.server.header_read_timeout = "500ms".into();
    config.dapr.grpc_idle_timeout = "1s".into();
    config.dapr.grpc_keepalive_interval = "60s".into();
    config.dapr.grpc_keepalive_timeout = "1s".into();
    let router = TestRouter::start(config).await;
    let grpc = format!("127.0.0.1:{grpc_port}");
    eventually(Duration::from_secs(10), async || {
        TcpStream::connect(&grpc)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;

    // More than the cap: 50 that send nothing, 20 that send half the preface.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(&grpc).await.expect("connect"));
    }
    let mut half = Vec::new();
    for _ in 0..20 {
        let mut conn = TcpStream::connect(&grpc).await.expect("connect");
        conn.write_all(&PREFACE[..12])
            .await
            .expect("half a preface");
        half.push(conn);
    }

    // The HTTP listener shares the cap: its requests wait at most until the silent ones
    // are dropped, and are answered.
    let health = client()
        .get(router.url("/healthz"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("/healthz answers while the gRPC port is flooded");
    assert_eq!(health.status(), 200);
    let published = client()
        .post(router.url("/v1/publish/order.created"))
        .timeout(Duration::from_secs(60))
        .json(&order_event(1, "ord_flood"))
        .send()
        .await
        .expect("a publish is answered while the gRPC port is flooded");
    assert_eq!(published.status(), 200);

    // evrouter closed every one of them (a bound only so that a failure ends the test).
    for (i, conn) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_server(conn, Duration::from_secs(30)).await,
            "silent connection {i} is still open"
        );
    }
    for (i, conn) in half.iter_mut().enumerate() {
        assert!(
            closed_by_server(conn, Duration::from_secs(30)).await,
            "half-preface connection {i} is still open"
        );
    }

    // A connection that completed its preface and then makes no call is closed too.
    let mut idle = TcpStream::connect(&grpc).await.expect("connect");
    idle.write_all(PREFACE).await.expect("preface");
    idle.write_all(&EMPTY_SETTINGS).await.expect("settings");
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(30)).await,
        "an idle HTTP/2 connection is still open"
    );

    // And a real gRPC client publishes.
    let mut dapr =
        dapr::dapr::proto::runtime::v1::dapr_client::DaprClient::connect(format!("http://{grpc}"))
            .await
            .expect("a gRPC connection once the flood is gone");
    dapr.publish_event(dapr::dapr::proto::runtime::v1::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "order.created".into(),
        data: serde_json::to_vec(&order_event(2, "ord_grpc")).expect("json"),
        data_content_type: "application/json".into(),
        metadata: Default::default(),
    })
    .await
    .expect("PublishEvent answered OK");
    let stored = redis.all_envelopes();
    assert_eq!(stored.len(), 2, "{:?}", json!(stored.len()));
    router.stop().await.expect("clean stop");
}
