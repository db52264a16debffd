//! A start that fails (the Dapr gRPC port already taken, a certificate that cannot be
//! used) exits non-zero with the error and leaves nothing behind: everything that can fail
//! is done before any part starts, so no lease is taken, no configured subscription
//! stored and no task or listener left running. Each case is tried with the binary (exit
//! status, message, Redis untouched) and in-process, where a task left running would go
//! on to take the leases after `run` returned its error.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{run_router, Config, ListenError, RedisServer, RunError};

/// How long a failed start may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// A config against `redis` with a configured subscription (stored, and its partitions
/// leased, once delivery starts), the Dapr gRPC API at `grpc_listen`, and `extra` TOML.
fn config_file(dir: &Path, redis: &RedisServer, grpc_listen: &str, extra: &str) -> PathBuf {
    let path = dir.join("evrouter.toml");
    std::fs::write(
        &path,
        format!(
            r#"[redis]
url = "{}"

[delivery]
lease_ttl = "1s"

[dapr]
grpc_listen = "{grpc_listen}"

[webhooks]
allow = ["127.0.0.0/8"]

[[subscriptions]]
name = "fulfillment"
topics = ["order.>"]
endpoints = ["http://127.0.0.1:9/hook"]

{extra}"#,
            redis.url()
        ),
    )
    .expect("write config");
    path
}

/// The config of a file that leaves the certificate's files to be read at start-up: they
/// exist (the config's check passes) but hold no certificate and no key.
fn unusable_certificate(dir: &Path, redis: &RedisServer) -> PathBuf {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, "not a certificate\n").expect("write");
    std::fs::write(&key, "not a key\n").expect("write");
    config_file(
        dir,
        redis,
        "",
        &format!("[server.tls]\ncert = {cert:?}\nkey = {key:?}\n"),
    )
}

/// Runs `evrouter serve` with `config` and waits for it to exit.
fn serve(config: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .env("EVR_LOG", "evrouter=info,warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn evrouter");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(EXIT_WITHIN) {
        Ok(output) => output.expect("wait for evrouter"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("evrouter kept running after a failed start");
        }
    }
}

/// Runs evrouter in-process with `config` and returns its error; then gives any task it
/// left behind the time to take the leases, and checks that none did.
async fn run_in_process(config: &Path, redis: &RedisServer) -> RunError {
    let config = Config::load(Some(config), Vec::new()).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = tokio::time::timeout(
        EXIT_WITHIN,
        run_router(config, listener, std::future::pending()),
    )
    .await
    .expect("evrouter kept running after a failed start");
    let Err(error) = result else {
        panic!("evrouter started");
    };
    // Several lease rounds (a quarter of the 1 s lease TTL each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_untouched(redis, &error.to_string());
    error
}

/// Redis holds no lease and no key at all.
fn assert_untouched(redis: &RedisServer, log: &str) {
    let mut conn = redis.conn();
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("*:lease")
        .query(&mut conn)
        .expect("keys");
    assert!(leases.is_empty(), "leases left behind: {leases:?}\n{log}");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("keys");
    assert!(keys.is_empty(), "a failed start wrote {keys:?}\n{log}");
}

/// The process failed, saying `expected` on stderr, and left Redis untouched.
fn assert_failed_cleanly(output: &Output, expected: &[&str], redis: &RedisServer) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "exit status {:?}\n{stdout}",
        output.status
    );
    for part in expected {
        assert!(
            stderr.contains(part),
            "stderr does not name {part:?}:\n{stderr}\n{stdout}"
        );
    }
    assert_untouched(redis, &stdout);
}

#[test]
fn a_busy_grpc_port_fails_the_start_and_leaves_no_lease() {
    let redis = RedisServer::start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = serve(&config_file(dir.path(), &redis, &address, ""));
    assert_failed_cleanly(&output, &["dapr.grpc_listen", &address], &redis);
    drop(busy);
}

#[test]
fn an_unusable_certificate_fails_the_start_and_leaves_no_lease() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = serve(&unusable_certificate(dir.path(), &redis));
    assert_failed_cleanly(&output, &["server.tls.cert", "cert.pem"], &redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_busy_grpc_port_is_a_bind_error_and_nothing_runs_on() {
    let redis = RedisServer::start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), &redis, &address, "");
    let error = run_in_process(&config, &redis).await;
    assert!(
        matches!(
            error,
            RunError::Listen(ListenError::Bind {
                key: "dapr.grpc_listen",
                ..
            })
        ),
        "{error:?}"
    );
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_an_unusable_certificate_is_a_tls_error_and_nothing_runs_on() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = unusable_certificate(dir.path(), &redis);
    let error = run_in_process(&config, &redis).await;
    assert!(
        matches!(&error, RunError::Listen(ListenError::Tls(tls)) if tls.path == "server.tls.cert"),
        "{error:?}"
    );
}
