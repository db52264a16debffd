//! The binary: `check-config` lists every problem with its key path; `serve` stops cleanly
//! with exit 0 on SIGTERM after answering in-flight publishes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{client, free_port, order_event, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_evrouter");

#[test]
fn check_config_lists_every_problem_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"nowhere\"\nmax_batchh = 5\n[writer]\nlinger = \"soon\"\n[[streams]]\nname = \"order\"\npartitions = 0\ncolour = \"red\"\n",
    )
    .expect("write");
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for path in [
        "server.listen",
        "server.max_batchh",
        "writer.linger",
        "streams[0].partitions",
        "streams[0].colour",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/evrouter.example.toml");
    let output = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = Command::new(BIN)
        .args(["check-config"])
        .env("EVR_SERVER__MAX_BATCH", "0")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.max_batch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_zero_on_sigterm() {
    let redis = RedisServer::start();
    let port = free_port();
    // The flags override what the file says.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:1\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n",
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis",
            &redis.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if let Ok(response) = client().get(format!("{base}/healthz")).send().await {
            up = response.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "evrouter did not start");
    let response = client()
        .post(format!("{base}/v1/publish/order.created"))
        .json(&order_event(1, "o"))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(redis.all_envelopes().len(), 1);
}
