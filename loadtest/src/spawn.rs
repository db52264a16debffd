//! `--spawn`: a private redis-server and evrouter on free ports for one run, stopped at the
//! end, with the CPU time each used.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// CPU seconds (user + system) used by each spawned process.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSeconds {
    pub evrouter: f64,
    pub redis: f64,
}

/// The spawned processes.
pub struct System {
    /// evrouter's base URL.
    pub router: String,
    redis: Child,
    evrouter: Child,
    _dir: TempDir,
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/<pid>/stat: user and system time in clock ticks (100/s).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / 100.0)
        })
        .unwrap_or(0.0)
}

impl System {
    /// Starts redis-server (no persistence) and evrouter, and waits until both answer.
    pub async fn start(
        evrouter_bin: Option<PathBuf>,
        token: Option<&str>,
        noisy_quota: Option<u32>,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let redis_port = free_port()?;
        let redis = Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        let bin = match evrouter_bin {
            Some(bin) => bin,
            None => std::env::current_exe()?
                .parent()
                .context("no folder for the loadtest binary")?
                .join("evrouter"),
        };
        let port = free_port()?;
        let mut command = Command::new(&bin);
        if let Some(token) = token {
            let noisy = match noisy_quota {
                Some(quota) => format!(
                    ", {{name = \"noisy\", token_sha256 = \"{}\", publish = [\">\"], publish_events_per_s = {quota}}}",
                    evrouter::auth::hash_token(crate::http::NOISY_TOKEN)
                ),
                None => String::new(),
            };
            command.env("EVR_AUTH__MODE", "\"token\"").env(
                "EVR_AUTH__PRINCIPALS",
                format!(
                    "[{{name = \"loadtest\", token_sha256 = \"{}\", publish = [\">\"], subscribe = [\">\"], admin = true}}{noisy}]",
                    evrouter::auth::hash_token(token)
                ),
            );
        }
        let evrouter = command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis", &format!("redis://127.0.0.1:{redis_port}")])
            .env("EVR_LOG", "warn")
            // The built-in subscriber listens on loopback.
            .env("EVR_WEBHOOKS__ALLOW", "[\"127.0.0.0/8\"]")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let system = Self {
            router: format!("http://127.0.0.1:{port}"),
            redis,
            evrouter,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(system);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("evrouter did not start listening")
    }

    /// CPU time used so far.
    pub fn cpu_seconds(&self) -> CpuSeconds {
        CpuSeconds {
            evrouter: cpu_seconds(self.evrouter.id()),
            redis: cpu_seconds(self.redis.id()),
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.evrouter.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.evrouter.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.evrouter.kill();
        let _ = self.evrouter.wait();
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}
