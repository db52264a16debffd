//! Delivery to a sink (the event store's archive): what a read returns goes to the sink in
//! batches, kept whole, without the lanes, presenting and per-event verdicts of a webhook
//! subscription. A batch closes at the subscription's `bulk.max_events` or after its
//! `bulk.max_wait_ms`; up to the sink's concurrency are kept at once; a batch kept is acked,
//! one that was not is tried again whole with the subscription's backoff. The sink takes
//! part in handoffs like a shard: a partition being handed over is confirmed once nothing
//! of it is buffered or being kept and its acks are written.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::drain::HandoffTracker;
use super::handoff::Handoffs;
use super::shard::RequestMetrics;
use super::stats::SubscriptionStats;
use super::subscription::Subscription;
use super::transport::{Item, Subscriber};
use crate::health::Part;
use crate::model::envelope::ENVELOPE_VERSION;
use crate::store::acks::{AckOp, Barrier};
use crate::store::lease::{HandoffBoard, Owned};
use crate::store::reader::{Dispatch, ReadEntry};

/// An entry on its way to the sink, and the share of the byte budget it holds.
struct Held {
    item: Item,
    kib: u32,
}

/// Hands a reader's entries to the sink's task.
#[derive(Clone)]
pub(super) struct SinkDispatch {
    to_sink: mpsc::Sender<Held>,
    permits: Arc<Semaphore>,
    /// The read-ahead budget in KiB, as for a webhook subscription.
    bytes: Arc<Semaphore>,
    bytes_total: u64,
    stats: Arc<SubscriptionStats>,
}

impl Dispatch for SinkDispatch {
    async fn dispatch(&mut self, entry: ReadEntry) {
        // Written by a newer evrouter: left pending for an instance that reads it, never
        // kept or acked unread (an entry that cannot be read at all is the sink's to skip).
        if entry.raw.first().is_some_and(|v| *v > ENVELOPE_VERSION) {
            tracing::warn!(partition = %entry.partition, id = %entry.id, "entry written by a newer evrouter left pending");
            self.permits.add_permits(1);
            return;
        }
        let kib = ((entry.raw.len() / 1024) as u64 + 1).min(self.bytes_total) as u32;
        match self.bytes.acquire_many(kib).await {
            Ok(permit) => permit.forget(),
            Err(_) => {
                self.permits.add_permits(1);
                return;
            }
        }
        let held = Held {
            item: Item {
                partition: entry.partition,
                id: entry.id,
                body: entry.raw,
                content_type: None,
            },
            kib,
        };
        self.stats.in_flight.fetch_add(1, AtomicOrdering::Relaxed);
        if self.to_sink.send(held).await.is_err() {
            // The sink has stopped (shutdown): the entry stays pending in Redis.
            self.stats.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
            self.bytes.add_permits(kib as usize);
            self.permits.add_permits(1);
        }
    }
}

/// A batch being kept, or waiting to be kept again.
struct Batch {
    items: Arc<Vec<Item>>,
    kib: usize,
    /// Attempts made (1 after the first).
    attempt: u32,
}

impl Batch {
    fn partitions(&self) -> Vec<Arc<str>> {
        self.items.iter().map(|i| i.partition.clone()).collect()
    }
}

/// What the sink's task needs.
pub(super) struct SinkWorker {
    pub sub: Arc<Subscription>,
    pub subscriber: Arc<dyn Subscriber>,
    pub acks: mpsc::Sender<AckOp>,
    pub owned: watch::Receiver<Arc<Owned>>,
    pub stats: Arc<SubscriptionStats>,
    pub requests: Arc<RequestMetrics>,
    pub handoffs: Arc<Handoffs>,
    pub stop: watch::Receiver<bool>,
}

/// Room in the queue from readers to the sink, in batches.
const QUEUED_BATCHES: usize = 2;

impl SinkWorker {
    /// The sink's task and the dispatch its readers hand entries to.
    pub(super) fn start(
        self,
        permits: Arc<Semaphore>,
        part: Arc<Part>,
    ) -> (SinkDispatch, tokio::task::JoinHandle<()>) {
        let max = self.sub.spec.bulk.max_events.max(1);
        let (to_sink, rx) = mpsc::channel(max * QUEUED_BATCHES);
        let kib =
            (self.sub.spec.max_in_flight_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS as u64);
        let bytes = Arc::new(Semaphore::new(kib as usize));
        let dispatch = SinkDispatch {
            to_sink,
            permits,
            bytes: bytes.clone(),
            bytes_total: kib,
            stats: self.stats.clone(),
        };
        // A panic marks the part down (and the health check fails) rather than passing
        // unseen; what it held stays pending in Redis.
        let task = tokio::spawn(async move {
            part.round(self.run(rx, bytes)).await;
        });
        (dispatch, task)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Held>, bytes: Arc<Semaphore>) {
        let subscriber = self.subscriber.clone();
        let Some(sink) = subscriber.sink() else {
            return;
        };
        let concurrency = sink.concurrency().max(1);
        let max = self.sub.spec.bulk.max_events.max(1);
        let wait = Duration::from_millis(self.sub.spec.bulk.max_wait_ms);
        let mut tracker = HandoffTracker::new(self.handoffs.join());
        let mut open: Vec<Item> = Vec::with_capacity(max);
        let mut open_kib = 0usize;
        let mut closes_at: Option<Instant> = None;
        let mut retries: VecDeque<(Instant, Batch)> = VecDeque::new();
        let mut keeping: JoinSet<(Batch, Instant, Result<(), String>)> = JoinSet::new();
        let mut taking = true;
        let mut stopping = false;
        let mut watching = true;
        loop {
            let room = keeping.len() < concurrency;
            // A batch due again goes before a new one.
            if room && retries.front().is_some_and(|(at, _)| *at <= Instant::now()) {
                if let Some((_, batch)) = retries.pop_front() {
                    keep(&mut keeping, sink, batch);
                }
                continue;
            }
            let full = open.len() >= max;
            let due = stopping || closes_at.is_some_and(|at| at <= Instant::now());
            if room && (full || due) && !open.is_empty() {
                let items = std::mem::replace(&mut open, Vec::with_capacity(max));
                let batch = Batch {
                    items: Arc::new(items),
                    kib: std::mem::take(&mut open_kib),
                    attempt: 0,
                };
                closes_at = None;
                keep(&mut keeping, sink, batch);
                continue;
            }
            if !taking && open.is_empty() && keeping.is_empty() {
                // Stopping: batches still waiting for another try stay pending in Redis.
                for (_, batch) in retries.drain(..) {
                    self.settle_unkept(&mut tracker, &bytes, batch);
                }
                break;
            }
            let next_retry = retries.front().map(|(at, _)| *at);
            tokio::select! {
                Some(done) = keeping.join_next(), if !keeping.is_empty() => {
                    let Ok((batch, started, kept)) = done else { continue };
                    let n = batch.items.len();
                    self.requests.record(0, started.into_std(), n);
                    match kept {
                        Ok(()) => self.settle_kept(&mut tracker, &bytes, batch).await,
                        Err(_) if stopping => self.settle_unkept(&mut tracker, &bytes, batch),
                        Err(_) => {
                            self.stats.retried.fetch_add(n as u64, AtomicOrdering::Relaxed);
                            let after = self.sub.spec.backoff.delay_ms(batch.attempt, fastrand::f64());
                            retries.push_back((Instant::now() + Duration::from_millis(after), batch));
                        }
                    }
                    self.confirm_drained(&mut tracker).await;
                }
                held = rx.recv(), if taking && !full => match held {
                    Some(held) => {
                        if open.is_empty() {
                            closes_at = Some(Instant::now() + wait);
                        }
                        tracker.sent(std::slice::from_ref(&held.item.partition));
                        open_kib += held.kib as usize;
                        open.push(held.item);
                    }
                    None => taking = false,
                },
                _ = sleep_until(closes_at), if room && closes_at.is_some() => {}
                _ = sleep_until(next_retry), if room && next_retry.is_some() => {}
                changed = self.owned.changed(), if watching => match changed {
                    Ok(()) => self.confirm_drained(&mut tracker).await,
                    Err(_) => watching = false,
                },
                // Stopping: what the readers hand over until they have stopped (the last
                // of them drops its sender) is kept with the rest, at once.
                _ = self.stop.changed(), if !stopping => stopping = true,
            }
        }
        let handoffs = self.handoffs.clone();
        let id = tracker.id();
        let leave = Barrier(Box::new(move || handoffs.leave(id)));
        if self.acks.send(AckOp::Barrier(leave)).await.is_err() {
            self.handoffs.leave(id);
        }
    }

    /// A batch kept: its entries are acked (each ack frees its read permit).
    async fn settle_kept(&self, tracker: &mut HandoffTracker, bytes: &Semaphore, batch: Batch) {
        let n = batch.items.len();
        tracker.returned(&batch.partitions());
        // The write has let go of the batch: its ids move into the acks, not copied.
        let acks: Vec<AckOp> = match Arc::try_unwrap(batch.items) {
            Ok(items) => items
                .into_iter()
                .map(|item| AckOp::Ack {
                    partition: item.partition,
                    id: item.id,
                })
                .collect(),
            Err(shared) => shared
                .iter()
                .map(|item| AckOp::Ack {
                    partition: item.partition.clone(),
                    id: item.id.clone(),
                })
                .collect(),
        };
        for ack in acks {
            if let Err(err) = self.acks.send(ack).await {
                // The acker has stopped: the entry stays pending and is kept again.
                tracing::warn!(error = %err, "ack not queued; the entry will be kept again");
            }
        }
        self.stats
            .delivered
            .fetch_add(n as u64, AtomicOrdering::Relaxed);
        self.stats
            .in_flight
            .fetch_sub(n as u64, AtomicOrdering::Relaxed);
        bytes.add_permits(batch.kib);
    }

    /// A batch given up while stopping: it stays pending in Redis for the next owner.
    fn settle_unkept(&self, tracker: &mut HandoffTracker, bytes: &Semaphore, batch: Batch) {
        let n = batch.items.len();
        tracker.returned(&batch.partitions());
        self.stats
            .in_flight
            .fetch_sub(n as u64, AtomicOrdering::Relaxed);
        bytes.add_permits(batch.kib);
    }

    /// Confirms the partitions being handed over that nothing here holds any more, once
    /// the acks queued before are written.
    async fn confirm_drained(&self, tracker: &mut HandoffTracker) {
        let owned = self.owned.borrow().clone();
        for partition in tracker.newly_drained(&*owned) {
            let handoffs = self.handoffs.clone();
            let id = tracker.id();
            let confirm = Barrier(Box::new(move || handoffs.confirm(&partition, id)));
            if self.acks.send(AckOp::Barrier(confirm)).await.is_err() {
                return;
            }
        }
    }
}

/// Starts keeping `batch`.
fn keep(
    keeping: &mut JoinSet<(Batch, Instant, Result<(), String>)>,
    sink: &dyn super::transport::Sink,
    mut batch: Batch,
) {
    batch.attempt = batch.attempt.saturating_add(1);
    let kept = AssertUnwindSafe(sink.keep(batch.items.clone())).catch_unwind();
    keeping.spawn(async move {
        let started = Instant::now();
        let result = kept
            .await
            .unwrap_or_else(|_| Err("the sink panicked while keeping a batch".into()));
        (batch, started, result)
    });
}

/// Sleeps until `at` (forever when there is none; the branch is off then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
