//! `--eventstore`: a database of its own for the spawned evrouter's event store, and what
//! the archive did: rows written, how long it took to catch up after the load, and the CPU
//! PostgreSQL used.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The run's database.
pub struct Database {
    admin: String,
    name: String,
    /// Its URL, for evrouter.
    pub url: String,
}

/// What the archive did over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// Events evrouter stored over the whole run (warm-up included).
    pub published: u64,
    /// Rows in the event store at the end.
    pub archived: u64,
    /// Seconds from the end of the load until every stored event was archived (none when
    /// it did not catch up within the drain time).
    pub caught_up_after_s: Option<f64>,
    /// CPU seconds of every PostgreSQL process over the run.
    pub postgres_cpu_s: f64,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

impl Database {
    /// Makes `loadtest_<pid>` on the server of `admin` (a postgres:// URL).
    pub async fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!("loadtest_{}", std::process::id());
        let client = connect(admin).await?;
        // Each on its own: CREATE DATABASE cannot share a transaction.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Ok(Self {
            url: format!("{base}/{name}"),
            admin: admin.to_string(),
            name,
        })
    }

    /// Rows archived so far.
    pub async fn rows(&self) -> u64 {
        let Ok(client) = connect(&self.url).await else {
            return 0;
        };
        match client
            .query_one("SELECT count(*) FROM evr_events", &[])
            .await
        {
            Ok(row) => row.get::<_, i64>(0).max(0) as u64,
            Err(_) => 0,
        }
    }

    /// Waits (up to `within`) until `published` rows are archived; the report.
    pub async fn settle(&self, published: u64, within: Duration, cpu_before: f64) -> ArchiveReport {
        let began = Instant::now();
        let mut caught_up = None;
        let mut archived = self.rows().await;
        while began.elapsed() < within {
            if archived >= published {
                caught_up = Some(began.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            archived = self.rows().await;
        }
        ArchiveReport {
            published,
            archived,
            caught_up_after_s: caught_up,
            postgres_cpu_s: postgres_cpu_seconds() - cpu_before,
        }
    }

    /// Drops the database.
    pub async fn drop_it(&self) {
        if let Ok(client) = connect(&self.admin).await {
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

/// CPU seconds used so far by every process named `postgres` on this machine, those that
/// have exited included.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime, stime, and the cutime and cstime of children reaped: the postmaster
            // carries those of backends and autovacuum workers that have exited.
            let ticks: Option<Vec<f64>> = (11..=14)
                .map(|i| fields.get(i).and_then(|f| f.parse().ok()))
                .collect();
            Some(ticks?.iter().sum::<f64>() / 100.0)
        })
        .sum()
}
