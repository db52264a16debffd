//! The daily partitions of the event and outcome tables: made ahead of the rows that need
//! them, and dropped whole once older than the retention, never emptied row by row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;

use super::EventStoreError;

const DAY: u64 = 86_400;

/// The tables partitioned by day.
pub const TABLES: &[&str] = &["evr_events", "evr_outcomes"];

/// A UTC day, as days since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u64);

impl Day {
    /// The day `at` falls in.
    pub fn of(at: SystemTime) -> Self {
        Self(at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / DAY)
    }

    /// The day of a time in ms since the epoch (a stream id's).
    pub fn of_ms(ms: u64) -> Self {
        Self(ms / 1000 / DAY)
    }

    fn start(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0 * DAY)
    }

    /// `YYYY-MM-DD`.
    fn date(self) -> String {
        humantime::format_rfc3339_seconds(self.start())
            .to_string()
            .chars()
            .take(10)
            .collect()
    }

    /// The name of `table`'s partition of this day, `{table}_YYYYMMDD`.
    pub fn table(self, table: &str) -> String {
        format!("{table}_{}", self.date().replace('-', ""))
    }

    /// Reads a partition's name back.
    fn from_table(table: &str, name: &str) -> Option<Self> {
        let digits = name.strip_prefix(table)?.strip_prefix('_')?;
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let text = format!(
            "{}-{}-{}T00:00:00Z",
            &digits[0..4],
            &digits[4..6],
            &digits[6..8]
        );
        humantime::parse_rfc3339(&text).ok().map(Self::of)
    }
}

/// Creates `table`'s partition of each of `days` that does not exist yet.
pub async fn ensure(client: &Client, table: &str, days: &[Day]) -> Result<(), EventStoreError> {
    for day in days {
        let next = Day(day.0 + 1);
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ('{}T00:00:00Z') TO ('{}T00:00:00Z')",
            day.table(table),
            day.date(),
            next.date()
        );
        match client.batch_execute(&sql).await {
            Ok(()) => {}
            // Another instance made it at the same moment.
            Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_TABLE) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// The days whose partition of one table is known to exist, so that a batch asks
/// PostgreSQL only for the days it has not seen.
#[derive(Debug, Default)]
pub struct KnownDays(std::sync::Mutex<std::collections::HashSet<Day>>);

impl KnownDays {
    /// Makes `table`'s partitions of those of `days` not known yet.
    pub async fn ensure(
        &self,
        client: &Client,
        table: &str,
        days: impl Iterator<Item = Day>,
    ) -> Result<(), EventStoreError> {
        let needed: Vec<Day> = {
            let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let mut needed: Vec<Day> = days.filter(|d| !known.contains(d)).collect();
            needed.sort();
            needed.dedup();
            needed
        };
        if !needed.is_empty() {
            ensure(client, table, &needed).await?;
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(needed);
        }
        Ok(())
    }
}

/// The days that have a partition of `table`, oldest first.
pub async fn existing(client: &Client, table: &str) -> Result<Vec<Day>, EventStoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent
              WHERE p.relname = $1",
            &[&table],
        )
        .await?;
    let mut days: Vec<Day> = rows
        .iter()
        .filter_map(|row| Day::from_table(table, row.get::<_, &str>(0)))
        .collect();
    days.sort();
    Ok(days)
}

/// Makes the partitions of today and the next `ahead` days of every table, and drops those
/// wholly older than `max_age` at `now`; returns the days dropped (of the event table).
pub async fn maintain(
    client: &Client,
    now: SystemTime,
    max_age: Duration,
    ahead: u64,
) -> Result<Vec<Day>, EventStoreError> {
    let today = Day::of(now);
    let days: Vec<Day> = (0..=ahead).map(|n| Day(today.0 + n)).collect();
    let oldest_kept = Day::of(now.checked_sub(max_age).unwrap_or(UNIX_EPOCH));
    let mut dropped = Vec::new();
    for table in TABLES {
        ensure(client, table, &days).await?;
        for day in existing(client, table).await? {
            // A day is dropped once its last moment is older than the retention.
            if day < oldest_kept {
                let name = day.table(table);
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
                tracing::info!(partition = %name, "event store partition dropped (retention)");
                if *table == "evr_events" {
                    dropped.push(day);
                }
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_names_its_table_and_reads_it_back() {
        let at = humantime::parse_rfc3339("2026-11-29T23:59:59Z").expect("time");
        let day = Day::of(at);
        assert_eq!(day.table("evr_events"), "evr_events_20261129");
        assert_eq!(day.date(), "2026-11-29");
        assert_eq!(
            Day::from_table("evr_events", "evr_events_20261129"),
            Some(day)
        );
        assert_eq!(Day::from_table("evr_events", "evr_events_default"), None);
        assert_eq!(Day::from_table("evr_events", "evr_outcomes_20261129"), None);
        assert_eq!(Day::of_ms(1_795_996_799_000), day);
    }
}
