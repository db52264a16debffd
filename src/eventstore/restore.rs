//! Restore: after Redis lost its data (a restart without persistence), the archived events
//! of a time range are written back into their partitions with the ids they had, in order,
//! so that subscriptions can be rewound over them. Pages are read from PostgreSQL in stored
//! order, a page ahead of the writes, and each page goes to Redis in one round trip (a
//! script call per partition).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::rows::micros;
use super::rows::{row_envelope, ARCHIVED_COLUMNS};
use super::{EventStore, EventStoreError};
use crate::store::restore::{append_pages, PartitionEntries};

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
    let (pages_tx, mut pages) = tokio::sync::mpsc::channel::<Vec<PartitionEntries>>(AHEAD);
    // The page after `cursor`, in stored order.
    let page_after = |cursor: Option<(i64, String, i32, i64)>| {
        let client = &client;
        async move {
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
            if !topics.is_empty() {
                params.push(Box::new(topics.to_vec()));
            }
            let mut after = String::new();
            if let Some((us, stream, partition, seq)) = cursor {
                params.push(Box::new(
                    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64),
                ));
                params.push(Box::new(stream));
                params.push(Box::new(partition));
                params.push(Box::new(seq));
                let n = params.len();
                after = format!(
                    " AND (stored_at, stream, partition, redis_seq) > (${}, ${}, ${}, ${})",
                    n - 3,
                    n - 2,
                    n - 1,
                    n
                );
            }
            client
                .query(
                    &format!(
                        "SELECT {ARCHIVED_COLUMNS} FROM evr_events
                          WHERE stored_at >= $1 AND stored_at < $2{topic_clause}{after}
                          ORDER BY stored_at, stream, partition, redis_seq LIMIT {PAGE}"
                    ),
                    &refs(&params),
                )
                .await
        }
    };
    // Each page's rows as the entries of their partitions, in their order.
    let decode = |rows: Vec<tokio_postgres::Row>| async move {
        let ring = store.ring_of(&rows, 18, 19).await?;
        let mut by_partition: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for row in &rows {
            let (_, stream, partition, redis_id, _, envelope) = row_envelope(row, &ring);
            by_partition
                .entry(format!("{prefix}:{{{stream}.{partition}}}"))
                .or_default()
                .push((redis_id, envelope.encode()));
        }
        Ok::<_, EventStoreError>(by_partition.into_iter().collect::<Vec<_>>())
    };
    let reader = async move {
        let mut rows = page_after(None).await?;
        while let Some(last) = rows.last() {
            // PostgreSQL reads the next page while this one is decoded.
            let cursor = (
                micros(last.get::<_, SystemTime>(0)),
                last.get::<_, String>(1),
                last.get::<_, i32>(2),
                last.get::<_, i64>(17),
            );
            let (next, page) = tokio::join!(page_after(Some(cursor)), decode(rows));
            if pages_tx.send(page?).await.is_err() {
                return Ok(());
            }
            rows = next?;
        }
        Ok::<(), EventStoreError>(())
    };
    let conn = conn.clone();
    // The receiver goes with the writer: a failed write ends the reader's sends too.
    let writer = async move {
        let mut done = Restored::default();
        while let Some(page) = pages.recv().await {
            // On a worker of its own, beside the decoding of the next page.
            let mut conn = conn.clone();
            let (written, skipped) =
                tokio::spawn(async move { append_pages(&mut conn, &page).await })
                    .await
                    .map_err(|e| EventStoreError::Config(format!("redis writer: {e}")))?
                    .map_err(|e| EventStoreError::Config(format!("redis: {e}")))?;
            done.written += written;
            done.skipped += skipped;
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
