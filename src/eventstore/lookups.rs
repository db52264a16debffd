//! The indexes that find an event by its id, its correlation id or its key, and its
//! outcomes by the event's id. A day still being written has only a BRIN bloom index of
//! these (a small summary per 32 pages, almost free to keep as rows arrive); once a day has
//! closed, each of its partitions gets a hash index per id and a B-tree of its keys in
//! stored order, built in one pass rather than entry by entry as the day's rows were
//! written. Lookups on the open days read the bloom summaries and only the page ranges
//! they may hold; on closed days, those indexes.

use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::partitions::{self, Day};
use super::EventStoreError;

/// How long after a day's end its lookup indexes are built: the archive may still be
/// writing the last moments of the day (entries are stored by when they were published).
pub const GRACE: Duration = Duration::from_secs(15 * 60);

/// The indexes of a closed day's partitions: (table, name suffix, method and columns).
const LOOKUPS: &[(&str, &str, &str)] = &[
    ("evr_events", "event_id", "hash (event_id)"),
    ("evr_events", "correlation", "hash (correlation_id)"),
    ("evr_events", "key", "btree (entity_key, stored_at)"),
    ("evr_outcomes", "event_id", "hash (event_id)"),
];

/// Key of the session advisory lock held while building, so that two instances do not
/// build (or drop as unfinished) the same index at once.
const BUILD_LOCK: i64 = 0x6576_725f_6c6f_6f6b;

/// Builds the lookup indexes of every closed day's partitions that lack them (an
/// index left unfinished by an earlier build is dropped and built again); returns the
/// indexes built. Each is built `CONCURRENTLY`: late rows of the day are not held up.
/// Does nothing while another instance builds.
pub async fn index_closed_days(
    client: &Client,
    now: SystemTime,
) -> Result<Vec<String>, EventStoreError> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&BUILD_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(Vec::new());
    }
    let built = build_missing(client, now).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&BUILD_LOCK])
        .await?;
    built
}

async fn build_missing(client: &Client, now: SystemTime) -> Result<Vec<String>, EventStoreError> {
    let closed = Day::of(now.checked_sub(GRACE).unwrap_or(now));
    let mut built = Vec::new();
    for parent in partitions::TABLES {
        for day in partitions::existing(client, parent).await? {
            if day >= closed {
                continue;
            }
            let table = day.table(parent);
            for (_, suffix, index) in LOOKUPS.iter().filter(|(t, ..)| t == parent) {
                let name = format!("{table}_{suffix}");
                match valid(client, &name).await? {
                    Some(true) => continue,
                    Some(false) => {
                        client
                            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                            .await?
                    }
                    None => {}
                }
                client
                    .batch_execute(&format!(
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} USING {index}"
                    ))
                    .await?;
                tracing::info!(index = %name, "event store lookup index built");
                built.push(name);
            }
        }
    }
    Ok(built)
}

/// Whether the index `name` is valid; `None` when there is none.
async fn valid(client: &Client, name: &str) -> Result<Option<bool>, EventStoreError> {
    Ok(client
        .query_opt(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
              WHERE c.relname = $1",
            &[&name],
        )
        .await?
        .map(|row| row.get(0)))
}

/// Summarizes the page ranges filled since the last call in the BRIN indexes of the
/// partitions of today and yesterday (a range not yet summarized is read whole by every
/// lookup on its day); returns the ranges summarized.
pub async fn summarize(client: &Client, now: SystemTime) -> Result<i64, EventStoreError> {
    let today = Day::of(now);
    let mut tables = Vec::new();
    for table in partitions::TABLES {
        for day in [Day(today.0.saturating_sub(1)), today] {
            tables.push(day.table(table));
        }
    }
    let row = client
        .query_one(
            "SELECT coalesce(sum(brin_summarize_new_values(c.oid)), 0)::bigint
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_am a ON a.oid = c.relam
              WHERE a.amname = 'brin'
                AND i.indrelid IN (SELECT to_regclass(t) FROM unnest($1::text[]) t)",
            &[&tables],
        )
        .await?;
    Ok(row.get(0))
}

/// Runs one lookup by id or key: the open days' partitions have no index a planner would choose
/// over reading them whole (it cannot tell how selective a bloom summary is), so the
/// lookup is told not to read tables whole.
pub async fn lookup(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, EventStoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL enable_seqscan = off").await?;
    let rows = tx.query(sql, params).await?;
    tx.commit().await?;
    Ok(rows)
}
