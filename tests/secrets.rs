//! Secrets out of sight: a Redis password given in the URL is printed as `***` by
//! `check-config` and in errors, and the password can come from `EVR_REDIS_PASSWORD` or
//! `redis.password_file` instead of the URL; evrouter then reaches a Redis that requires
//! it, and never writes it to its log.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{client, free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_evrouter");
const PASSWORD: &str = "s3cret-pa55";

#[test]
fn check_config_hides_the_password() {
    let output = Command::new(BIN)
        .args(["check-config"])
        .env(
            "EVR_REDIS__URL",
            format!("redis://:{PASSWORD}@127.0.0.1:6379/0"),
        )
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("redis://:***@127.0.0.1:6379/0"), "{stdout}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");

    let output = Command::new(BIN)
        .args(["check-config"])
        .env(
            "EVR_REDIS__URL",
            format!("http://:{PASSWORD}@127.0.0.1:6379"),
        )
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("redis.url") && !stderr.contains(PASSWORD),
        "{stderr}"
    );
}

async fn serves_with(redis: &RedisServer, env: &[(&str, String)], args: &[&str]) {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis",
            &redis.url(),
        ])
        .args(args)
        .env("EVR_LOG", "debug")
        .stdout(Stdio::from(log.reopen().expect("log")))
        .stderr(Stdio::from(log.reopen().expect("log")));
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn");
    let mut ready = false;
    for _ in 0..1200 {
        if let Ok(response) = client()
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if response.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        ready,
        "evrouter never reached the password-protected Redis:\n{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password is in the log:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_the_environment_or_a_file() {
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        PASSWORD,
    ]);
    serves_with(&redis, &[("EVR_REDIS_PASSWORD", PASSWORD.to_string())], &[]).await;

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\npassword_file = {:?}\n",
            file.display().to_string()
        ),
    )
    .expect("write");
    serves_with(&redis, &[], &["--config", config.to_str().expect("path")]).await;
}
