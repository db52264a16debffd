//! Delivery outcomes into the event store: each subscription's outcome for each event
//! (failures always, successes sampled at `outcomes_sample`), queued without waiting and
//! written in batches with binary `COPY`. The queue is bounded: while PostgreSQL is away
//! outcomes beyond it are dropped and counted; they are a record for the trace view, not
//! part of delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::pin_mut;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::partitions::{Day, KnownDays};
use super::rows::stream_and_partition;
use super::{EventStore, EventStoreError, ARCHIVE};
use crate::delivery::outcomes::{OutcomeLog, Settled};

/// Outcomes waiting to be written.
const QUEUE: usize = 65_536;

/// Most outcomes in one `COPY`.
const BATCH: usize = 5_000;

/// Longest wait for a batch to fill.
const WAIT: Duration = Duration::from_millis(200);

/// The outcome log of the event store.
#[derive(Debug)]
pub struct Outcomes {
    queue: mpsc::Sender<Settled>,
    keep_delivered: f64,
    dropped: AtomicU64,
    written: Arc<AtomicU64>,
}

impl Outcomes {
    /// Starts the writer; delivered events are kept at the ratio `keep_delivered`.
    pub fn start(store: Arc<EventStore>, keep_delivered: f64) -> (Arc<Self>, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(store, rx, written.clone()));
        let log = Arc::new(Self {
            queue,
            keep_delivered,
            dropped: AtomicU64::new(0),
            written,
        });
        (log, task)
    }

    /// Outcomes written and dropped since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

impl OutcomeLog for Outcomes {
    fn keep_delivered(&self) -> bool {
        self.keep_delivered >= 1.0 || fastrand::f64() < self.keep_delivered
    }

    fn record(&self, settled: Settled) {
        // The archive's own outcomes are its rows.
        if &*settled.subscription == ARCHIVE {
            return;
        }
        if self.queue.try_send(settled).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(store: Arc<EventStore>, mut rx: mpsc::Receiver<Settled>, written: Arc<AtomicU64>) {
    let days = KnownDays::default();
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                n = rx.recv_many(&mut batch, room) => if n == 0 { break },
            }
        }
        // A batch is tried until it is written: a failed COPY wrote nothing of it.
        let mut backoff = Duration::from_millis(500);
        loop {
            match write(&store, &days, &batch).await {
                Ok(()) => {
                    written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, outcomes = batch.len(), "outcomes not written; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

async fn write(
    store: &EventStore,
    days: &KnownDays,
    batch: &[Settled],
) -> Result<(), EventStoreError> {
    let client = store.client().await?;
    days.ensure(
        &client,
        "evr_outcomes",
        batch.iter().map(|s| Day::of_ms(s.at_us / 1000)),
    )
    .await?;
    let sink = client
        .copy_in(
            "COPY evr_outcomes (at, subscription, event_id, stream, partition, redis_id, fate, status, attempt, latency_us, error) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT4,
        Type::INT8,
        Type::TEXT,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for s in batch {
        let at = UNIX_EPOCH + Duration::from_micros(s.at_us);
        let (stream, partition) = stream_and_partition(&s.partition);
        let subscription: &str = &s.subscription;
        let status = s.status.map(i32::from);
        let attempt = s.attempt.min(i32::MAX as u32) as i32;
        let latency = s.latency_us.min(i64::MAX as u64) as i64;
        let values: [&(dyn ToSql + Sync); 11] = [
            &at,
            &subscription,
            &s.event_id,
            &stream,
            &partition,
            &s.id,
            &s.fate.as_str(),
            &status,
            &attempt,
            &latency,
            &s.error,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}
