//! A slow-loris client trickling a body one byte at a time gets 408 after
//! `server.body_read_timeout`, and meanwhile other clients are served at once.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{order_event, test_config, RedisServer, RouterApi, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_others_are_served_meanwhile() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.server.body_read_timeout = "2s".into();
    let router = TestRouter::start(config).await;
    let address = router.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    slow.write_all(
        b"POST /v1/publish/order.created HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .await
    .expect("head");
    let trickle = tokio::spawn(async move {
        let mut answer = Vec::new();
        for _ in 0..40 {
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    // Served while the trickle goes on.
    router
        .publish_ok("order.created", &order_event(1, "o1"))
        .await;
    let answer = trickle.await.expect("trickle");
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer}");
    assert_eq!(
        redis.all_envelopes().len(),
        1,
        "nothing of the trickled body stored"
    );
}
