//! `--spawn`: a private redis-server and one or more evrouters on free ports for one run,
//! stopped at the end (each evrouter with SIGTERM, its exit status kept), with the CPU
//! time each used; `--chaos` kills, pauses and restarts them and Redis meanwhile.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// CPU seconds (user + system) used by each spawned process, and evrouter's peak
/// resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSeconds {
    pub evrouter: f64,
    pub redis: f64,
    /// The largest resident set of any evrouter instance so far (`VmHWM`), in MiB.
    pub evrouter_peak_rss_mib: f64,
}

/// The spawned processes.
pub struct System {
    /// The first evrouter's base URL.
    pub router: String,
    /// Every evrouter's base URL.
    pub routers: Vec<String>,
    redis: Child,
    redis_port: u16,
    durable: bool,
    evrouters: Vec<Child>,
    ports: Vec<u16>,
    /// Each evrouter's HTTP port and the port of its Dapr gRPC API.
    grpc: Vec<(u16, u16)>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    dir: TempDir,
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

/// `VmHWM` of /proc/<pid>/status: the peak resident set, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(0.0)
}

/// The spawned Redis's `maxmemory`.
const REDIS_MAXMEMORY: &str = "4gb";

fn start_redis(dir: &std::path::Path, port: u16, durable: bool) -> anyhow::Result<Child> {
    let persistence: &[&str] = if durable {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            // Bounded as a production Redis is: evrouter keeps its streams within
            // `retention.memory_share` of it, trimming acknowledged history first.
            "--maxmemory",
            REDIS_MAXMEMORY,
            "--maxmemory-policy",
            "noeviction",
        ])
        .args(persistence)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")
}

impl System {
    /// Starts redis-server (durable or without persistence) and `instances` evrouters,
    /// and waits until they answer. With a `token`, authentication is on and `noisy` (a
    /// token and its events/s quota) adds the noisy publisher as a principal of its own.
    pub async fn start(
        evrouter_bin: Option<PathBuf>,
        token: Option<&str>,
        noisy: Option<(&str, u32)>,
        instances: usize,
        durable: bool,
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let redis_port = free_port()?;
        let redis = start_redis(&dir.0, redis_port, durable)?;
        let bin = match evrouter_bin {
            Some(bin) => bin,
            None => std::env::current_exe()?
                .parent()
                .context("no folder for the loadtest binary")?
                .join("evrouter"),
        };
        let mut env = vec![
            ("EVR_LOG".to_string(), "warn".to_string()),
            // The built-in subscriber listens on loopback.
            (
                "EVR_WEBHOOKS__ALLOW".to_string(),
                "[\"127.0.0.0/8\"]".to_string(),
            ),
        ];
        if let Some(token) = token {
            let noisy = match noisy {
                Some((noisy_token, quota)) => format!(
                    ", {{name = \"noisy\", token_sha256 = \"{}\", publish = [\">\"], publish_events_per_s = {quota}}}",
                    evrouter::auth::hash_token(noisy_token)
                ),
                None => String::new(),
            };
            env.push(("EVR_AUTH__MODE".into(), "\"token\"".into()));
            env.push((
                "EVR_AUTH__PRINCIPALS".into(),
                format!(
                    "[{{name = \"loadtest\", token_sha256 = \"{}\", publish = [\">\"], subscribe = [\">\"], admin = true}}{noisy}]",
                    evrouter::auth::hash_token(token)
                ),
            ));
        }
        if durable {
            env.push(("EVR_REDIS__DURABILITY".into(), "\"strict\"".into()));
        }
        env.extend(extra_env);
        let mut system = Self {
            router: String::new(),
            routers: Vec::new(),
            redis,
            redis_port,
            durable,
            evrouters: Vec::new(),
            ports: Vec::new(),
            grpc: Vec::new(),
            bin,
            env,
            dir,
        };
        for _ in 0..instances.max(1) {
            let port = free_port()?;
            system.grpc.push((port, free_port()?));
            let child = system.spawn_evrouter(port)?;
            system.evrouters.push(child);
            system.ports.push(port);
            system.routers.push(format!("http://127.0.0.1:{port}"));
        }
        system.router = system.routers[0].clone();
        for port in system.ports.clone() {
            wait_for(port).await?;
        }
        Ok(system)
    }

    fn spawn_evrouter(&self, port: u16) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.bin);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis", &format!("redis://127.0.0.1:{}", self.redis_port)])
            // The Dapr gRPC API on a port of its own, which `--api dapr-grpc` calls.
            .env(
                "EVR_DAPR__GRPC_LISTEN",
                format!("\"127.0.0.1:{}\"", self.grpc_port(port)),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))
    }

    /// The Dapr gRPC API's port of the evrouter on HTTP `port`.
    fn grpc_port(&self, port: u16) -> u16 {
        self.grpc
            .iter()
            .find(|(http, _)| *http == port)
            .map_or(0, |(_, grpc)| *grpc)
    }

    /// Every evrouter's Dapr gRPC API, as `127.0.0.1:PORT`.
    pub fn grpc_endpoints(&self) -> Vec<String> {
        self.grpc
            .iter()
            .map(|(_, grpc)| format!("127.0.0.1:{grpc}"))
            .collect()
    }

    /// Number of evrouter instances.
    pub fn instances(&self) -> usize {
        self.evrouters.len()
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to instance `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = self.evrouters.get(i) {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    /// Waits for instance `i` to exit (after a signal); its exit status.
    pub async fn reap(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.evrouters.get_mut(i)?;
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Starts instance `i` again on its port.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.ports[i];
        self.evrouters[i] = self.spawn_evrouter(port)?;
        wait_for(port).await
    }

    /// Kills Redis (-9) and starts it again on the same port and folder.
    pub fn restart_redis(&mut self) -> anyhow::Result<()> {
        let _ = self.redis.kill();
        let _ = self.redis.wait();
        self.redis = start_redis(&self.dir.0, self.redis_port, self.durable)?;
        Ok(())
    }

    /// CPU time used so far (every instance together).
    pub fn cpu_seconds(&self) -> CpuSeconds {
        CpuSeconds {
            evrouter: self.evrouters.iter().map(|c| cpu_seconds(c.id())).sum(),
            redis: cpu_seconds(self.redis.id()),
            evrouter_peak_rss_mib: self
                .evrouters
                .iter()
                .map(|c| peak_rss_mib(c.id()))
                .fold(0.0, f64::max),
        }
    }

    /// Stops every instance with SIGTERM; whether each exited 0 within the shutdown budget.
    pub async fn stop(&mut self) -> Vec<bool> {
        for i in 0..self.evrouters.len() {
            self.signal(i, "CONT");
            self.signal(i, "TERM");
        }
        let mut clean = Vec::new();
        for i in 0..self.evrouters.len() {
            let status = self.reap(i, Duration::from_secs(30)).await;
            clean.push(status.is_some_and(|status| status.success()));
        }
        clean
    }
}

async fn wait_for(port: u16) -> anyhow::Result<()> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("evrouter did not start listening on port {port}")
}

impl Drop for System {
    fn drop(&mut self) {
        for child in &mut self.evrouters {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}
