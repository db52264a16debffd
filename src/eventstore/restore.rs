//! Restore: after Redis lost its data (a restart without persistence), the archived events
//! of a time range are written back into their partitions with the ids they had, in order,
//! so that subscriptions can be rewound over them. Pages are read from PostgreSQL in stored
//! order, a page ahead of the writes, and each page goes to Redis as one script call per
//! partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::rows::{row_envelope, ARCHIVED_COLUMNS};
use super::{EventStore, EventStoreError};
use crate::store::restore::append_with_ids;

/// Events read from PostgreSQL at a time.
const PAGE: i64 = 5000;

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Restored {
    /// Events written back.
    pub written: u64,
    /// Events not written: their partition holds newer entries already.
    pub skipped: u64,
    /// How long it took.
    pub seconds: f64,
    /// Events per second.
    pub events_per_s: f64,
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Pages read ahead of the one being written.
const AHEAD: usize = 2;

/// Writes the events stored in `[from, to)` (of `topics`, or all) back into their
/// partitions under `prefix`; PostgreSQL is read a page ahead of the writes to Redis.
/// `progress(done, total)` is called after every page.
pub async fn restore(
    store: &EventStore,
    conn: &ConnectionManager,
    prefix: &str,
    from: SystemTime,
    to: SystemTime,
    topics: &[String],
    progress: impl Fn(u64, u64),
) -> Result<Restored, EventStoreError> {
    let began = Instant::now();
    let client = store.client().await?;
    let topic_clause = if topics.is_empty() {
        ""
    } else {
        " AND topic = ANY($3)"
    };
    let mut base: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
    if !topics.is_empty() {
        base.push(Box::new(topics.to_vec()));
    }
    let total: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM evr_events WHERE stored_at >= $1 AND stored_at < $2{topic_clause}"
            ),
            &refs(&base),
        )
        .await?
        .get(0);
    let total = total.max(0) as u64;
    let (pages_tx, mut pages) =
        tokio::sync::mpsc::channel::<BTreeMap<String, Vec<(String, Vec<u8>)>>>(AHEAD);
    let reader = async move {
        let mut cursor: Option<(i64, String, i32, i64)> = None;
        loop {
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
            if !topics.is_empty() {
                params.push(Box::new(topics.to_vec()));
            }
            let mut after = String::new();
            if let Some((us, stream, partition, seq)) = &cursor {
                params.push(Box::new(
                    UNIX_EPOCH + Duration::from_micros((*us).max(0) as u64),
                ));
                params.push(Box::new(stream.clone()));
                params.push(Box::new(*partition));
                params.push(Box::new(*seq));
                let n = params.len();
                after = format!(
                    " AND (stored_at, stream, partition, redis_seq) > (${}, ${}, ${}, ${})",
                    n - 3,
                    n - 2,
                    n - 1,
                    n
                );
            }
            let rows = client
                .query(
                    &format!(
                        "SELECT {ARCHIVED_COLUMNS} FROM evr_events
                          WHERE stored_at >= $1 AND stored_at < $2{topic_clause}{after}
                          ORDER BY stored_at, stream, partition, redis_seq LIMIT {PAGE}"
                    ),
                    &refs(&params),
                )
                .await?;
            if rows.is_empty() {
                return Ok::<(), EventStoreError>(());
            }
            let ring = store.ring_of(&rows, 18, 19).await?;
            // Each partition's entries, in their order.
            let mut by_partition: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
            for row in &rows {
                let (us, stream, partition, redis_id, seq, envelope) = row_envelope(row, &ring);
                by_partition
                    .entry(format!("{prefix}:{{{stream}.{partition}}}"))
                    .or_default()
                    .push((redis_id, envelope.encode()));
                cursor = Some((us, stream, partition, seq));
            }
            if pages_tx.send(by_partition).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut conn = conn.clone();
    // The receiver goes with the writer: a failed write ends the reader's sends too.
    let writer = async move {
        let mut done = Restored::default();
        while let Some(page) = pages.recv().await {
            for (key, entries) in page {
                let (written, skipped) = append_with_ids(&mut conn, &key, &entries)
                    .await
                    .map_err(|e| EventStoreError::Config(format!("redis: {e}")))?;
                done.written += written;
                done.skipped += skipped;
            }
            progress(done.written + done.skipped, total);
        }
        Ok::<Restored, EventStoreError>(done)
    };
    let (read, written) = tokio::join!(reader, writer);
    read?;
    let mut done = written?;
    done.seconds = began.elapsed().as_secs_f64();
    done.events_per_s = (done.written + done.skipped) as f64 / done.seconds.max(0.001);
    Ok(done)
}
