//! A start that fails (the Dapr gRPC port already taken, a certificate that cannot be
//! used) exits non-zero with the error and leaves nothing behind: everything that can fail
//! is done before any part starts, so no lease is taken, no configured subscription
//! stored and no task or listener left running.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::RedisServer;

/// How long a failed start may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// A config with a configured subscription (stored, and its partitions leased, once
/// delivery starts), and `extra` TOML after it.
fn config_file(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("evrouter.toml");
    std::fs::write(
        &path,
        format!(
            r#"[[subscriptions]]
name = "fulfillment"
topics = ["order.>"]
endpoints = ["http://127.0.0.1:9/hook"]

{extra}"#
        ),
    )
    .expect("write config");
    path
}

/// Runs `evrouter serve` with `config` against `redis` and waits for it to exit.
fn serve(redis: &RedisServer, config: &Path, env: &[(&str, &str)]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
        .env("EVR_LOG", "evrouter=info,warn")
        .env("NO_COLOR", "1")
        .env("EVR_WEBHOOKS__ALLOW", "[\"127.0.0.0/8\"]")
        .env("EVR_DAPR__GRPC_LISTEN", "\"\"")
        .envs(env.iter().copied())
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

/// The process failed, saying `expected` on stderr, and Redis holds no lease and no key
/// at all.
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
    let mut conn = redis.conn();
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("*:lease")
        .query(&mut conn)
        .expect("keys");
    assert!(
        leases.is_empty(),
        "leases left behind: {leases:?}\n{stdout}"
    );
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("keys");
    assert!(keys.is_empty(), "a failed start wrote {keys:?}\n{stdout}");
}

#[test]
fn a_busy_grpc_port_fails_the_start_and_leaves_no_lease() {
    let redis = RedisServer::start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "");
    let output = serve(
        &redis,
        &config,
        &[("EVR_DAPR__GRPC_LISTEN", &format!("\"{address}\""))],
    );
    assert_failed_cleanly(&output, &["dapr.grpc_listen", &address], &redis);
    drop(busy);
}

#[test]
fn an_unusable_certificate_fails_the_start_and_leaves_no_lease() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Files that exist (the config's check passes) but hold no certificate and no key.
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "not a certificate\n").expect("write");
    std::fs::write(&key, "not a key\n").expect("write");
    let config = config_file(
        dir.path(),
        &format!("[server.tls]\ncert = {cert:?}\nkey = {key:?}\n"),
    );
    let output = serve(&redis, &config, &[]);
    assert_failed_cleanly(&output, &["server.tls.cert", "cert.pem"], &redis);
}
