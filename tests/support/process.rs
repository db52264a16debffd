//! evrouter as a separate process (the real binary), for tests that kill, pause or measure
//! it; stopped on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{client, free_port, RedisServer};

/// A running `evrouter serve`.
pub struct RouterProcess {
    child: Child,
    /// Its base URL.
    pub base: String,
}

impl RouterProcess {
    /// Starts the binary on a free port against `redis`, with an optional config file,
    /// and waits until it answers.
    pub async fn start(redis: &RedisServer, config: Option<&Path>) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_evrouter"));
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis",
                &redis.url(),
            ])
            .env("EVR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn evrouter");
        let process = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if client()
                .get(format!("{}/healthz", process.base))
                .send()
                .await
                .is_ok()
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("evrouter did not start");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
