//! Restore: after Redis lost its data (a restart without persistence), the archived events
//! of a time range are written back into their partitions with the ids they had, in order,
//! so that subscriptions can be rewound over them. Time slices of the range are read from
//! PostgreSQL in stored order, several at once, and written in order, a page's `XADD`s in
//! one round trip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio_postgres::types::ToSql;

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

/// Time slices read at once, each on a connection of its own (their pages are written in
/// order: a slice waits until the ones before it are written).
const SLICES_AHEAD: usize = 3;

/// What a restore reads (its topics, or all) and where the events go (partitions under
/// `prefix`), in slices of about `slice_events` events.
#[derive(Clone)]
pub struct Range {
    store: Arc<EventStore>,
    prefix: String,
    topics: Vec<String>,
    slice_events: u64,
}

impl Range {
    /// Events of `topics` (all when empty) from `store`, to partitions under `prefix`.
    pub fn new(
        store: &Arc<EventStore>,
        prefix: &str,
        topics: &[String],
        slice_events: u64,
    ) -> Self {
        Self {
            store: store.clone(),
            prefix: prefix.to_string(),
            topics: topics.to_vec(),
            slice_events: slice_events.max(1),
        }
    }

    fn topic_clause(&self, n: usize) -> String {
        if self.topics.is_empty() {
            String::new()
        } else {
            format!(" AND topic = ANY(${n})")
        }
    }

    /// How many events were stored in each second of `[from, to)` that has any, in
    /// order: (the second, since the epoch; count).
    async fn per_second(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<(i64, u64)>, EventStoreError> {
        let client = self.store.client().await?;
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
        if !self.topics.is_empty() {
            params.push(Box::new(self.topics.clone()));
        }
        let rows = client
            .query(
                &format!(
                    "SELECT floor(extract(epoch FROM stored_at))::bigint AS s, count(*)
                       FROM evr_events WHERE stored_at >= $1 AND stored_at < $2{}
                      GROUP BY s ORDER BY s",
                    self.topic_clause(3)
                ),
                &refs(&params),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    /// The events of `[from, to)` in stored order, as pages of each partition's entries.
    async fn slice(
        self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<Vec<PartitionEntries>>, EventStoreError> {
        let client = self.store.client().await?;
        let mut pages = Vec::new();
        let mut cursor: Option<(SystemTime, String, i32, i64)> = None;
        loop {
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
            if !self.topics.is_empty() {
                params.push(Box::new(self.topics.clone()));
            }
            let mut after = String::new();
            if let Some((at, stream, partition, seq)) = cursor.take() {
                params.push(Box::new(at));
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
            let rows = client
                .query(
                    &format!(
                        "SELECT {ARCHIVED_COLUMNS} FROM evr_events
                          WHERE stored_at >= $1 AND stored_at < $2{}{after}
                          ORDER BY stored_at, stream, partition, redis_seq LIMIT {PAGE}",
                        self.topic_clause(3)
                    ),
                    &refs(&params),
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(pages);
            };
            cursor = Some((last.get(0), last.get(1), last.get(2), last.get(17)));
            let ring = self.store.ring_of(&rows, 18, 19).await?;
            let mut by_partition: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
            for row in &rows {
                let (_, stream, partition, redis_id, _, envelope) = row_envelope(row, &ring);
                by_partition
                    .entry(format!("{}:{{{stream}.{partition}}}", self.prefix))
                    .or_default()
                    .push((redis_id, envelope.encode()));
            }
            pages.push(by_partition.into_iter().collect());
            if rows.len() < PAGE as usize {
                return Ok(pages);
            }
        }
    }
}

/// Writes the events of `range` stored in `[from, to)` back into their partitions. The
/// time is cut into slices of about the range's `slice_events` events (at whole seconds),
/// read and decoded [`SLICES_AHEAD`] at a time, each on a connection of its own, and
/// written in order, a page's `XADD`s in one round trip. `progress(done, total)` is called
/// after every page.
pub async fn restore(
    range: &Range,
    conn: &ConnectionManager,
    from: SystemTime,
    to: SystemTime,
    progress: impl Fn(u64, u64),
) -> Result<Restored, EventStoreError> {
    let began = Instant::now();
    // Slices of about `slice_events` events, cut at whole seconds.
    let seconds = range.per_second(from, to).await?;
    let total: u64 = seconds.iter().map(|(_, n)| n).sum();
    let mut cuts = vec![from];
    let mut filling = 0;
    for (second, n) in &seconds {
        if filling >= range.slice_events {
            let at = UNIX_EPOCH + Duration::from_secs((*second).max(0) as u64);
            if at > from && at < to {
                cuts.push(at);
            }
            filling = 0;
        }
        filling += n;
    }
    cuts.push(to);
    let bounds: Vec<(SystemTime, SystemTime)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let mut read = futures_util::stream::iter(bounds)
        .map(|(start, end)| tokio::spawn(range.clone().slice(start, end)))
        .buffered(SLICES_AHEAD);
    let mut done = Restored::default();
    while let Some(slice) = read.next().await {
        let pages = slice.map_err(|e| EventStoreError::Config(format!("reader: {e}")))??;
        for page in pages {
            let mut conn = conn.clone();
            let (written, skipped) = append_pages(&mut conn, &page)
                .await
                .map_err(|e| EventStoreError::Config(format!("redis: {e}")))?;
            done.written += written;
            done.skipped += skipped;
            progress(done.written + done.skipped, total);
        }
    }
    done.seconds = began.elapsed().as_secs_f64();
    done.events_per_s = (done.written + done.skipped) as f64 / done.seconds.max(0.001);
    Ok(done)
}
