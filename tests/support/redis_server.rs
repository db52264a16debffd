//! A `redis-server` owned by one test, on a free port, and what the tests read from it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, Envelope};

/// A `redis-server` owned by one test, stopped on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a throwaway server: no RDB, no AOF.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server that fsyncs every write to its AOF, for durability tests.
    pub fn start_durable() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// Starts a server with extra arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            port: free_port(),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn(true);
        server
    }

    /// Starts the server. A port found free can be bound by another test's server before
    /// this one binds it: this one then exits, and the other would answer in its place (two
    /// tests sharing one Redis). So the server is up only when the one answering is this
    /// process; a first start (`may_move`) then moves to another port, a restart keeps its
    /// own (the router is configured with it).
    fn spawn(&mut self, may_move: bool) {
        for _ in 0..5 {
            let mut child = Command::new("redis-server")
                .arg("--port")
                .arg(self.port.to_string())
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(self.dir.path().join("redis.log"))
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            if self.answers_as(&mut child) {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                may_move,
                "redis-server could not take port {} again",
                self.port
            );
            self.port = free_port();
        }
        panic!("redis-server found no free port");
    }

    /// Waits until `child` answers on the port; false when it exits first (the port was
    /// taken) or another process answers there.
    fn answers_as(&self, child: &mut Child) -> bool {
        for _ in 0..1200 {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            // Up once it answers PING (not while it loads its AOF), then asked who it is.
            let info = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| {
                    redis::cmd("PING").query::<String>(&mut c)?;
                    redis::cmd("INFO").arg("server").query::<String>(&mut c)
                });
            match info {
                Ok(info) => {
                    let pid = info
                        .lines()
                        .find_map(|l| l.strip_prefix("process_id:"))
                        .and_then(|p| p.trim().parse::<u32>().ok());
                    return pid == Some(child.id());
                }
                // A server that requires a password answers, with NOAUTH: it is up, and it
                // is this one while this one runs.
                Err(err) if err.code() == Some("NOAUTH") => {
                    std::thread::sleep(Duration::from_millis(50));
                    return matches!(child.try_wait(), Ok(None));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(25)),
            }
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's data folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(false);
    }

    /// SIGSTOP or SIGCONT the server.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// Every envelope stored in every `evr:*` partition key, decoded.
    pub fn all_envelopes(&self) -> Vec<(String, String, Envelope)> {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:{*}")
            .query(&mut conn)
            .expect("keys");
        let mut out = Vec::new();
        for key in keys {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .expect("xrange");
            for entry in entries.ids {
                let bytes: Vec<u8> = entry.get("e").expect("field e");
                out.push((
                    key.clone(),
                    entry.id.clone(),
                    Envelope::decode(&bytes).expect("envelope"),
                ));
            }
        }
        out
    }
}

impl RedisServer {
    /// Number of entries in `key` that decode as envelopes (others are skipped).
    pub fn decodable_entries(&self, key: &str) -> usize {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut self.conn())
            .expect("xrange");
        entries
            .ids
            .iter()
            .filter_map(|entry| entry.get::<Vec<u8>>("e"))
            .filter(|bytes| Envelope::decode(bytes).is_ok())
            .count()
    }
}

impl RedisServer {
    /// The ids holding the leases of the `order` stream's partitions.
    pub fn lease_holders(&self) -> Vec<String> {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:{order.*}:lease")
            .query(&mut conn)
            .expect("keys");
        keys.iter()
            .filter_map(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<String>>(&mut conn)
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// The `order` stream's partition keys that exist.
    pub fn order_partitions(&self) -> Vec<String> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:{order.*}")
            .query(&mut self.conn())
            .expect("keys");
        keys.into_iter().filter(|k| k.ends_with('}')).collect()
    }

    /// Entries of the `order` stream pending for `group`, over its partitions.
    pub fn pending(&self, group: &str) -> u64 {
        let mut conn = self.conn();
        self.order_partitions()
            .iter()
            .map(|key| {
                let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                    .arg(key)
                    .arg(group)
                    .query(&mut conn)
                    .expect("xpending");
                pending.count() as u64
            })
            .sum()
    }

    /// Entries of any stream read by `group` and not acked yet, over every partition.
    pub fn pending_anywhere(&self, group: &str) -> u64 {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evr:{*}")
            .query(&mut conn)
            .expect("keys");
        keys.iter()
            .filter(|k| k.ends_with('}'))
            .map(|key| {
                let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query(&mut conn)
                    .expect("xinfo groups");
                groups
                    .groups
                    .iter()
                    .filter(|g| g.name == group)
                    .map(|g| g.pending as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Entries in the `order` stream, over its partitions.
    pub fn order_entries(&self) -> usize {
        let mut conn = self.conn();
        self.order_partitions()
            .iter()
            .map(|k| {
                redis::cmd("XLEN")
                    .arg(k)
                    .query::<usize>(&mut conn)
                    .expect("xlen")
            })
            .sum()
    }
}

/// Waits until `n` different instances hold the `order` stream's leases, naming `why` if
/// they never do.
pub async fn wait_for_holders(redis: &RedisServer, n: usize, why: &str) {
    super::eventually(std::time::Duration::from_secs(10), async || {
        let holders: std::collections::HashSet<String> =
            redis.lease_holders().into_iter().collect();
        if holders.len() == n {
            Ok(())
        } else {
            Err(format!("{why}: leases held by {holders:?}"))
        }
    })
    .await;
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
        // A failing test shows what Redis said.
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- redis-server on port {} (last lines) ---", self.port);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Every dead letter of a subscription, over all its partitions: each entry's fields.
pub fn dlq_entries(redis: &RedisServer, subscription: &str) -> Vec<HashMap<String, String>> {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("evr:{{*}}:dlq:{subscription}"))
        .query(&mut conn)
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("xrange");
        for entry in range.ids {
            let mut fields = HashMap::new();
            for (name, value) in &entry.map {
                if let redis::Value::BulkString(bytes) = value {
                    fields.insert(name.clone(), String::from_utf8_lossy(bytes).into_owned());
                }
            }
            out.push(fields);
        }
    }
    out
}
