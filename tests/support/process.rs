//! evrouter as a separate process (the real binary), for tests that kill, pause or measure
//! it; stopped on drop. Its output goes to a file that is printed when the test fails.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{client, free_port, RedisServer, RouterApi};

/// libfaketime, from Debian's `faketime` package.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How much of the end of the log a failing test prints.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// A running `evrouter serve`.
pub struct RouterProcess {
    child: Child,
    /// Whether `child` has been waited for.
    exited: bool,
    /// Its stdout and stderr.
    log: tempfile::NamedTempFile,
    /// Its base URL.
    pub base: String,
}

impl RouterProcess {
    /// Starts the binary on a free port against `redis`, with an optional config file,
    /// and waits until it answers. Logs at `EVR_LOG` when the test run sets it, else at
    /// evrouter's info level.
    pub async fn start(redis: &RedisServer, config: Option<&Path>) -> Self {
        Self::launch(&redis.url(), config, &[], false).await
    }

    /// Starts it with more environment variables.
    pub async fn start_with_env(
        redis: &RedisServer,
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(&redis.url(), config, env, false).await
    }

    /// Starts it with its clock shifted by `offset` (libfaketime's `FAKETIME`, e.g.
    /// `+1h`).
    pub async fn start_with_clock(
        redis: &RedisServer,
        config: Option<&Path>,
        offset: &str,
    ) -> Self {
        Self::launch(&redis.url(), config, &[("FAKETIME", offset)], true).await
    }

    /// Starts it against the Redis at `redis_url` (a proxy in front of a test server) with
    /// its clocks (wall and monotonic) shifted by the offset written in `file` (e.g. `+0`,
    /// later `+3`), read again every second: the test can make time jump for this process
    /// alone.
    pub async fn start_with_clock_file(
        redis_url: &str,
        config: Option<&Path>,
        file: &Path,
    ) -> Self {
        let file = file.to_str().expect("utf-8 path");
        let clock = [
            ("FAKETIME_TIMESTAMP_FILE", file),
            ("FAKETIME_CACHE_DURATION", "1"),
        ];
        Self::launch(redis_url, config, &clock, true).await
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn launch(
        redis_url: &str,
        config: Option<&Path>,
        env: &[(&str, &str)],
        faketime: bool,
    ) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let output = |log: &tempfile::NamedTempFile| {
            Stdio::from(log.as_file().try_clone().expect("log file handle"))
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_evrouter"));
        if faketime {
            // libfaketime preloaded into evrouter itself (the `faketime` wrapper would
            // stay in between, and a signal to it would not reach evrouter).
            command
                .env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_DONT_RESET", "1");
        }
        command.envs(env.iter().copied());
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis",
                redis_url,
            ])
            .env(
                "EVR_LOG",
                std::env::var("EVR_LOG").unwrap_or_else(|_| "evrouter=info,warn".into()),
            )
            .env("NO_COLOR", "1")
            // The tests' subscribers listen on loopback.
            .env("EVR_WEBHOOKS__ALLOW", "[\"127.0.0.0/8\"]")
            // Many instances run at once: no Dapr gRPC API unless a test sets it.
            .env(
                "EVR_DAPR__GRPC_LISTEN",
                env.iter()
                    .find(|(k, _)| *k == "EVR_DAPR__GRPC_LISTEN")
                    .map_or("\"\"", |(_, v)| v),
            )
            .stdout(output(&log))
            .stderr(output(&log))
            .spawn()
            .expect("spawn evrouter");
        let process = Self {
            child,
            exited: false,
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..1200 {
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

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        self.exited = true;
        status
    }

    /// The end of what the process wrote.
    fn log_tail(&self) -> String {
        let mut file = match self.log.reopen() {
            Ok(file) => file,
            Err(error) => return format!("(log unreadable: {error})"),
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let skip = len.saturating_sub(LOG_TAIL_BYTES);
        let mut bytes = Vec::new();
        let _ = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(skip));
        let _ = file.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        if skip > 0 {
            format!("(first {skip} bytes left out)\n{text}")
        } else {
            text.into_owned()
        }
    }
}

impl RouterApi for RouterProcess {
    fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if !self.exited {
            self.signal("CONT");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- evrouter at {} (pid {}) wrote: ---\n{}--- end of evrouter's log ---",
                self.base,
                self.child.id(),
                self.log_tail()
            );
        }
    }
}
