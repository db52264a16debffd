//! A worker shard of one subscription: per-key FIFO lanes (one event of a key in flight at
//! a time under `ordering = "key"`), under `ordering = "sequence"` a reorder buffer in front
//! of the lanes, a deadline index for retries served by this one task, delivery over HTTP,
//! and the ack, retry or dead-letter decision for every answer.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};

use super::lanes::Lanes;
use super::reorder::{
    missing_count, CloseReason, ClosedGap, Offered, OnTimeout, ReorderBuffer, ReorderLimits,
};
use super::stats::SubscriptionStats;
use super::subscription::{
    DeliveryMode, GapPolicy, NamedStart, Ordering, ReorderStart, Subscription,
};
use crate::deliver::{Answer, Deliverer, Endpoints, Outcome, Outgoing};
use crate::store::acks::{sequence_state_key, AckOp, Failure};
use crate::store::lease::Owned;

/// One event on its way to a subscriber.
#[derive(Debug)]
pub struct Delivery {
    /// Partition key it was read from.
    pub partition: Arc<str>,
    /// Stream entry id.
    pub id: String,
    /// Its lane: the entity key, or a key of its own when order does not matter.
    pub lane: Arc<str>,
    /// `event_id`.
    pub event_id: String,
    /// Topic.
    pub topic: String,
    /// W3C trace context.
    pub traceparent: String,
    /// When evrouter received it (µs since the epoch).
    pub received_us: u64,
    /// `metadata.sequence`, when the event has one.
    pub sequence: Option<u64>,
    /// The body to send: the event's JSON (a CloudEvent or raw bytes for a Dapr app).
    pub payload: Bytes,
    /// A Dapr app's path for this event, from its routing rules.
    pub path: Option<Arc<str>>,
    /// The body's content type when not `application/json`.
    pub content_type: Option<Arc<str>>,
    /// When the event expires (µs since the epoch): not sent after that.
    pub expires_us: Option<u64>,
    /// The stored entry (for the DLQ).
    pub raw: Bytes,
    /// Attempts made so far (including ones before a takeover).
    pub attempts: u32,
    /// First attempt on this instance, ms since the epoch.
    pub first_attempt_ms: u64,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last error.
    pub last_error: Option<String>,
}

/// What every shard of a subscription shares.
#[derive(Clone)]
pub struct ShardContext {
    /// The subscription.
    pub sub: Arc<Subscription>,
    /// Its endpoints and breakers.
    pub endpoints: Arc<Endpoints>,
    /// The HTTP client.
    pub deliverer: Deliverer,
    /// Where acks and dead letters go.
    pub acks: mpsc::Sender<AckOp>,
    /// Read-ahead budget: one permit per event held.
    pub permits: Arc<Semaphore>,
    /// The partitions this instance holds.
    pub owned: watch::Receiver<Arc<Owned>>,
    /// Counters.
    pub stats: Arc<SubscriptionStats>,
    /// How many shards the subscription runs (they share its reorder limits).
    pub shards: usize,
    /// For reading back the next expected sequence numbers kept in Redis.
    pub store: redis::aio::ConnectionManager,
    /// Where events for a Dapr `deadLetterTopic` go (to be published).
    pub dead_letter_topics: Option<mpsc::Sender<crate::dapr::deliver::DeadLetter>>,
}

/// Most keys whose stored sequence state is read in one round trip.
const RESTORE_BATCH: usize = 512;

/// Sequence ordering: a key idle this long, with nothing held or in flight, is forgotten
/// (its next number is in Redis), so that memory follows the active keys, not all keys ever.
const IDLE_KEY: std::time::Duration = std::time::Duration::from_secs(60);

/// Offers between two sweeps for idle keys.
const SWEEP_EVERY: u32 = 4096;

struct Finished {
    lanes: Vec<Arc<str>>,
    answer: Answer,
}

/// The shard task's state.
pub struct Shard {
    ctx: ShardContext,
    rx: mpsc::Receiver<Delivery>,
    stop: watch::Receiver<bool>,
    lanes: Lanes<Delivery>,
    /// (partition, entry id) of every event in the lanes.
    held: HashSet<(Arc<str>, String)>,
    ready: VecDeque<Arc<str>>,
    timers: BTreeMap<(Instant, u64), Arc<str>>,
    timer_seq: u64,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    in_flight: usize,
    bulk_deadline: Option<Instant>,
    paused_until: Option<Instant>,
    stopping: bool,
    /// `ordering = "sequence"`: events wait here until their turn, then go to the lanes.
    reorder: Option<ReorderBuffer<Delivery>>,
    /// This shard's part of the shared "held now" gauge.
    held_reported: u64,
    /// Sequence ordering: events of keys whose stored next number is being read, in
    /// arrival order, and the keys still to ask for.
    restoring: std::collections::HashMap<Arc<str>, Vec<Delivery>>,
    to_restore: Vec<Arc<str>>,
    restore_in_flight: bool,
    restored_tx: mpsc::UnboundedSender<Vec<(Arc<str>, Option<u64>)>>,
    restored_rx: mpsc::UnboundedReceiver<Vec<(Arc<str>, Option<u64>)>>,
    offers_since_sweep: u32,
    /// The partitions held at the last ownership change.
    owned_before: Arc<Owned>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Shard {
    /// A shard reading deliveries from `rx` until `stop` turns true.
    pub fn new(
        ctx: ShardContext,
        rx: mpsc::Receiver<Delivery>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let reorder = (ctx.sub.spec.ordering == Ordering::Sequence)
            .then(|| ReorderBuffer::new(reorder_limits(&ctx)));
        let (restored_tx, restored_rx) = mpsc::unbounded_channel();
        Self {
            reorder,
            held_reported: 0,
            restoring: std::collections::HashMap::new(),
            to_restore: Vec::new(),
            restore_in_flight: false,
            restored_tx,
            restored_rx,
            offers_since_sweep: 0,
            owned_before: Arc::new(Owned::default()),
            ctx,
            rx,
            stop,
            lanes: Lanes::default(),
            held: HashSet::new(),
            ready: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            finished_tx,
            finished_rx,
            in_flight: 0,
            bulk_deadline: None,
            paused_until: None,
            stopping: false,
        }
    }

    /// Runs until stopped and every request in flight has been answered. Events not yet
    /// delivered stay pending in Redis for whoever reads the partition next.
    pub async fn run(mut self) {
        loop {
            self.dispatch();
            self.restore_next_batch();
            if self.stopping && self.in_flight == 0 {
                self.leave_gauges();
                break;
            }
            let wake = [
                self.timers.keys().next().map(|(at, _)| *at),
                self.bulk_deadline,
                self.paused_until,
                self.reorder.as_ref().and_then(ReorderBuffer::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                Some(finished) = self.finished_rx.recv() => self.on_finished(finished),
                Some(restored) = self.restored_rx.recv() => self.on_restored(restored),
                delivery = self.rx.recv(), if !self.stopping => match delivery {
                    Some(delivery) => self.on_delivery(delivery),
                    None => self.stopping = true,
                },
                _ = self.stop.changed(), if !self.stopping => self.stopping = true,
                changed = self.ctx.owned.changed(), if self.reorder.is_some() => match changed {
                    Ok(()) => self.on_ownership_change(),
                    Err(_) => self.stopping = true,
                },
                _ = sleep_until(wake), if wake.is_some() => self.on_wake(),
            }
        }
    }

    fn on_delivery(&mut self, delivery: Delivery) {
        // A partition dropped and regained is reclaimed whole, including entries this
        // shard still holds: those must not be queued a second time.
        if !self
            .held
            .insert((delivery.partition.clone(), delivery.id.clone()))
        {
            self.ctx.permits.add_permits(1);
            self.ctx
                .stats
                .in_flight
                .fetch_sub(1, AtomicOrdering::Relaxed);
            return;
        }
        if self.reorder.is_some() {
            self.offer(delivery);
        } else {
            self.enqueue(delivery);
        }
    }

    /// Puts an event at the back of its lane.
    fn enqueue(&mut self, delivery: Delivery) {
        let lane = delivery.lane.clone();
        if self.lanes.push(lane.clone(), delivery) {
            self.ready.push_back(lane);
        }
    }

    /// Sequence ordering: hands an event to the reorder buffer and acts on its answer.
    fn offer(&mut self, delivery: Delivery) {
        let stats = &self.ctx.stats.sequence;
        let Some(seq) = delivery.sequence else {
            SubscriptionStats::bump(&stats.unsequenced);
            self.enqueue(delivery);
            return;
        };
        let Some(buffer) = self.reorder.as_mut() else {
            self.enqueue(delivery);
            return;
        };
        let lane = delivery.lane.clone();
        // A key not seen since this shard started: its next number may be kept in Redis
        // (from before a restart or a takeover); read it before deciding anything.
        if buffer.next_expected(&lane).is_none() {
            match self.restoring.get_mut(&lane) {
                Some(waiting) => waiting.push(delivery),
                None => {
                    self.restoring.insert(lane.clone(), vec![delivery]);
                    self.to_restore.push(lane);
                }
            }
            return;
        }
        let mut closed = Vec::new();
        let offered = buffer.offer(&lane, seq, delivery, Instant::now(), &mut closed);
        match offered {
            Offered::Deliver(run) => {
                // The gap is filled once nothing of the key is held any more.
                if run.len() > 1 && buffer.held_for(&lane) == 0 {
                    SubscriptionStats::bump(&stats.gaps_filled);
                }
                for delivery in run {
                    self.enqueue(delivery);
                }
            }
            Offered::Held { opened } => {
                if opened {
                    SubscriptionStats::bump(&stats.gaps_opened);
                }
            }
            Offered::Duplicate(delivery) | Offered::AlreadyHeld(delivery) => {
                SubscriptionStats::bump(&stats.duplicates);
                self.settle(delivery, None);
            }
            Offered::LateAfterGap(delivery) => {
                SubscriptionStats::bump(&stats.late_after_gap);
                let reason = "late_after_gap";
                let note = format!("sequence {seq} arrived after its gap was skipped");
                if self.ctx.sub.spec.dead_letter {
                    self.settle(delivery, Some((reason, note)));
                } else {
                    self.settle(delivery, None);
                }
            }
        }
        self.close_gaps(closed);
        self.count_held();
        self.offers_since_sweep += 1;
        if self.offers_since_sweep >= SWEEP_EVERY {
            self.offers_since_sweep = 0;
            self.sweep_idle_keys();
        }
    }

    /// Forgets the keys that hold nothing, have nothing in a lane or being read back, and
    /// have seen no event for [`IDLE_KEY`].
    fn sweep_idle_keys(&mut self) {
        let Some(before) = Instant::now().checked_sub(IDLE_KEY) else {
            return;
        };
        let (lanes, restoring) = (&self.lanes, &self.restoring);
        if let Some(buffer) = self.reorder.as_mut() {
            buffer.evict_idle(before, |key| {
                lanes.contains(key) || restoring.contains_key(key)
            });
        }
    }

    /// Starts reading the stored next numbers of keys seen for the first time, one batch
    /// at a time.
    fn restore_next_batch(&mut self) {
        if self.restore_in_flight || self.to_restore.is_empty() {
            return;
        }
        let take = self.to_restore.len().min(RESTORE_BATCH);
        let lanes: Vec<Arc<str>> = self.to_restore.drain(..take).collect();
        let subscription = self.ctx.sub.spec.name.clone();
        let keys: Vec<String> = lanes
            .iter()
            .map(|lane| state_key(lane, &subscription))
            .collect();
        let mut conn = self.ctx.store.clone();
        let done = self.restored_tx.clone();
        let mut stop = self.stop.clone();
        self.restore_in_flight = true;
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(50);
            let values = loop {
                let read: redis::RedisResult<Vec<Option<u64>>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
                match read {
                    Ok(values) => break values,
                    Err(err) => {
                        // Deciding without the stored number could break the order: wait.
                        tracing::warn!(error = %err, "could not read sequence state; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                    }
                }
            };
            let _ = done.send(lanes.into_iter().zip(values).collect());
        });
    }

    /// Applies stored next numbers, then offers the events that waited for them.
    fn on_restored(&mut self, restored: Vec<(Arc<str>, Option<u64>)>) {
        self.restore_in_flight = false;
        for (lane, next) in restored {
            // A key whose partition went away meanwhile has nothing waiting: skip it.
            let Some(waiting) = self.restoring.remove(&lane) else {
                continue;
            };
            if let (Some(next), Some(buffer)) = (next, self.reorder.as_mut()) {
                buffer.restore(lane.clone(), next, Instant::now());
            }
            for delivery in waiting {
                self.offer_known(delivery);
            }
        }
    }

    /// Offers an event whose key's state is settled (known or restored).
    fn offer_known(&mut self, delivery: Delivery) {
        if let Some(buffer) = self.reorder.as_mut() {
            if buffer.next_expected(&delivery.lane).is_none() {
                // Nothing was stored: the key starts now, by `start`. Mark it known so
                // that its next events are not read back again.
                if let Some(seq) = delivery.sequence {
                    let first = match self.ctx.sub.spec.reorder.start {
                        ReorderStart::At(n) => n,
                        ReorderStart::Named(NamedStart::FirstSeen) => seq,
                    };
                    buffer.restore(delivery.lane.clone(), first, Instant::now());
                }
            }
        }
        self.offer(delivery);
    }

    /// Records a key's next number once nothing of it is left in a lane: every event below
    /// that number is then done with (delivered, dropped or dead-lettered, and its ack or
    /// dead letter queued before this). Held events are above it and stay pending.
    fn advance_if_idle(&mut self, lane: &Arc<str>) {
        if self.lanes.contains(lane) {
            return;
        }
        let Some(buffer) = self.reorder.as_mut() else {
            return;
        };
        let Some(next) = buffer.next_expected(lane) else {
            return;
        };
        // Only while the partition is held (the check made before each send): after the
        // lease moved, a dead letter of ours may have been refused and its entry left to
        // the new owner, which must not find it counted as done.
        if !self.ctx.owned.borrow().holds(partition_of_lane(lane)) {
            return;
        }
        // Not forgotten as idle before this is written.
        buffer.touch(lane, Instant::now());
        let op = AckOp::Advance {
            key: state_key(lane, &self.ctx.sub.spec.name),
            next,
        };
        if let Err(err) = self.ctx.acks.try_send(op) {
            tracing::warn!(error = %err, "sequence state not recorded");
        }
    }

    /// The partitions held changed: forget the sequence state of keys whose partition is
    /// gone (their held events stay pending in Redis for the new owner, and the key's next
    /// number is read back from Redis if the partition returns).
    fn on_ownership_change(&mut self) {
        let owned = self.ctx.owned.borrow_and_update().clone();
        let before = std::mem::replace(&mut self.owned_before, owned.clone());
        // Renewals publish a new set every round: look at the keys only when a partition
        // held before is not held now.
        if before.partitions().all(|p| owned.holds(p)) {
            return;
        }
        let lost = |lane: &str| !owned.holds(partition_of_lane(lane));
        let mut dropped = match self.reorder.as_mut() {
            Some(buffer) => buffer.forget(lost),
            None => return,
        };
        let gone: Vec<Arc<str>> = self.restoring.keys().filter(|l| lost(l)).cloned().collect();
        for lane in gone {
            dropped.extend(self.restoring.remove(&lane).unwrap_or_default());
        }
        self.release_dropped(dropped);
    }

    /// Lets go of events that never reached a lane and will be read again: their read
    /// permits are freed; they stay pending in Redis.
    fn release_dropped(&mut self, dropped: Vec<Delivery>) {
        if dropped.is_empty() {
            return;
        }
        for delivery in &dropped {
            self.held
                .remove(&(delivery.partition.clone(), delivery.id.clone()));
        }
        self.ctx.permits.add_permits(dropped.len());
        self.ctx
            .stats
            .in_flight
            .fetch_sub(dropped.len() as u64, AtomicOrdering::Relaxed);
        self.count_held();
    }

    /// Acts on gaps the reorder buffer closed without their missing events.
    fn close_gaps(&mut self, closed: Vec<ClosedGap<Delivery>>) {
        for gap in closed {
            let stats = &self.ctx.stats.sequence;
            match gap.reason {
                CloseReason::Timeout => SubscriptionStats::bump(&stats.gaps_timed_out),
                CloseReason::BufferFull => SubscriptionStats::bump(&stats.gaps_closed_full),
            }
            let missing = gap
                .missing
                .iter()
                .map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("{}-{}", r.start(), r.end())
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            if !gap.release.is_empty() {
                stats
                    .skipped
                    .fetch_add(missing_count(&gap.missing), AtomicOrdering::Relaxed);
                tracing::info!(subscription = %self.ctx.sub.spec.name, key = %gap.key, %missing, reason = gap.reason.as_str(), "sequence gap skipped");
            }
            for delivery in gap.release {
                self.enqueue(delivery);
            }
            for delivery in gap.dead_letter {
                let note = format!("missing sequence numbers {missing}");
                if self.ctx.sub.spec.dead_letter {
                    self.settle(delivery, Some((gap.reason.as_str(), note)));
                } else {
                    SubscriptionStats::bump(&self.ctx.stats.dropped);
                    self.settle(delivery, None);
                }
            }
            self.advance_if_idle(&gap.key);
        }
    }

    /// Takes this shard's share out of the shared gauges as it stops (the stats outlive a
    /// worker restarted with a new spec); events still held or being read back stay
    /// pending in Redis.
    fn leave_gauges(&mut self) {
        let waiting = self.reorder.as_ref().map_or(0, ReorderBuffer::held)
            + self.restoring.values().map(Vec::len).sum::<usize>();
        self.ctx
            .stats
            .in_flight
            .fetch_sub(waiting as u64, AtomicOrdering::Relaxed);
        self.ctx
            .stats
            .sequence
            .held
            .fetch_sub(self.held_reported, AtomicOrdering::Relaxed);
        self.held_reported = 0;
    }

    /// Brings the shared "held now" gauge up to date with this shard's buffer.
    fn count_held(&mut self) {
        let Some(buffer) = &self.reorder else {
            return;
        };
        let now = buffer.held() as u64;
        let gauge = &self.ctx.stats.sequence.held;
        if now > self.held_reported {
            gauge.fetch_add(now - self.held_reported, AtomicOrdering::Relaxed);
        } else {
            gauge.fetch_sub(self.held_reported - now, AtomicOrdering::Relaxed);
        }
        self.held_reported = now;
    }

    /// Finishes an event that never reached a lane: acked, or dead-lettered with `reason`.
    fn settle(&mut self, delivery: Delivery, dead_letter: Option<(&str, String)>) {
        self.held
            .remove(&(delivery.partition.clone(), delivery.id.clone()));
        self.ctx
            .stats
            .in_flight
            .fetch_sub(1, AtomicOrdering::Relaxed);
        let op = match dead_letter {
            Some((reason, note)) => {
                SubscriptionStats::bump(&self.ctx.stats.dead_lettered);
                AckOp::DeadLetter {
                    partition: delivery.partition,
                    id: delivery.id,
                    raw: delivery.raw,
                    failure: Failure {
                        reason: reason.to_string(),
                        last_status: None,
                        last_error: Some(note),
                        attempts: delivery.attempts,
                        first_attempt_ms: now_ms(),
                        last_attempt_ms: now_ms(),
                    },
                }
            }
            None => AckOp::Ack {
                partition: delivery.partition,
                id: delivery.id,
            },
        };
        self.queue_ack(op);
    }

    fn on_wake(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let lane = entry.remove();
            if self.lanes.contains(&lane) {
                self.ready.push_back(lane);
            }
        }
        if self.paused_until.is_some_and(|at| at <= now) {
            self.paused_until = None;
        }
        if let Some(buffer) = self.reorder.as_mut() {
            let closed = buffer.expire(now);
            self.close_gaps(closed);
            self.count_held();
        }
    }

    /// Sends what is ready, within the in-flight limit and while an endpoint is usable.
    fn dispatch(&mut self) {
        let sub = self.ctx.sub.clone();
        let spec = &sub.spec;
        let bulk = spec.mode == DeliveryMode::Bulk;
        let per_request = if bulk { spec.bulk.max_events } else { 1 };
        while !self.stopping && !self.ready.is_empty() && self.paused_until.is_none() {
            if self.in_flight >= spec.max_in_flight {
                return;
            }
            if bulk && self.ready.len() < per_request {
                let now = Instant::now();
                match self.bulk_deadline {
                    None => {
                        self.bulk_deadline =
                            Some(now + std::time::Duration::from_millis(spec.bulk.max_wait_ms));
                        return;
                    }
                    Some(deadline) if now < deadline => return,
                    Some(_) => {}
                }
            }
            let lanes = self.take_ready(per_request);
            let lanes = self.drop_expired(lanes);
            if lanes.is_empty() {
                continue;
            }
            let (endpoint, url) = match self.ctx.endpoints.pick() {
                Ok((index, url)) => (index, url.clone()),
                Err(retry_at) => {
                    // Every endpoint is open: hold everything; the lag stays in Redis.
                    for lane in lanes.into_iter().rev() {
                        self.ready.push_front(lane);
                    }
                    // A probe may be in flight (its time already passed): look again
                    // shortly rather than spinning.
                    let soon = Instant::now() + std::time::Duration::from_millis(20);
                    self.paused_until = Some(
                        retry_at
                            .unwrap_or_else(|| {
                                Instant::now()
                                    + std::time::Duration::from_millis(
                                        self.ctx.sub.spec.breaker.cooldown_ms,
                                    )
                            })
                            .max(soon),
                    );
                    return;
                }
            };
            self.bulk_deadline = None;
            self.send(lanes, endpoint, url, bulk);
        }
    }

    /// Acks the lanes' heads whose time to live passed while they waited (retries, order)
    /// and returns the others.
    fn drop_expired(&mut self, lanes: Vec<Arc<str>>) -> Vec<Arc<str>> {
        let now = now_us();
        let mut live = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let expired = self
                .lanes
                .head(&lane)
                .and_then(|h| h.expires_us)
                .is_some_and(|at| at <= now);
            if expired {
                SubscriptionStats::bump(&self.ctx.stats.expired);
                self.finish(&lane, true);
            } else {
                live.push(lane);
            }
        }
        live
    }

    /// Pops up to `n` ready lanes whose partition this instance still holds.
    fn take_ready(&mut self, n: usize) -> Vec<Arc<str>> {
        let owned = self.ctx.owned.borrow().clone();
        let mut lanes = Vec::with_capacity(n);
        while lanes.len() < n {
            let Some(lane) = self.ready.pop_front() else {
                break;
            };
            let Some(head) = self.lanes.head(&lane) else {
                continue;
            };
            if !owned.holds(&head.partition) {
                self.abandon(&lane);
                continue;
            }
            lanes.push(lane);
        }
        lanes
    }

    /// Forgets a lane whose partition moved to another instance: its events stay pending
    /// in Redis and the new owner delivers them.
    fn abandon(&mut self, lane: &Arc<str>) {
        // The key's sequence state goes too: its next number moved past the events
        // dropped here, which will be read again.
        if let Some(buffer) = self.reorder.as_mut() {
            let dropped = buffer.forget(|key| key == &**lane);
            self.release_dropped(dropped);
        }
        let n = self.forget_lane(lane);
        if n > 0 {
            self.ctx.permits.add_permits(n);
            self.ctx
                .stats
                .in_flight
                .fetch_sub(n as u64, AtomicOrdering::Relaxed);
        }
    }

    /// Removes a lane and forgets its entries; returns how many there were.
    fn forget_lane(&mut self, lane: &Arc<str>) -> usize {
        let removed = self.lanes.remove_all(lane);
        for delivery in &removed {
            self.held
                .remove(&(delivery.partition.clone(), delivery.id.clone()));
        }
        removed.len()
    }

    fn send(&mut self, mut lanes: Vec<Arc<str>>, endpoint: usize, url: hyper::Uri, bulk: bool) {
        let first_ms = now_ms();
        let sub = self.ctx.sub.clone();
        // A Dapr app: every event of one request goes to the same route; the others wait
        // for the next request, in their order.
        let mut url = url;
        let mut content_type: Arc<str> = Arc::from("application/json");
        if let Some(path) = lanes
            .first()
            .and_then(|l| self.lanes.head(l))
            .and_then(|h| h.path.clone())
        {
            let (same, other): (Vec<_>, Vec<_>) = lanes.into_iter().partition(|l| {
                self.lanes
                    .head(l)
                    .is_some_and(|h| h.path.as_deref() == Some(&*path))
            });
            for lane in other.into_iter().rev() {
                self.ready.push_front(lane);
            }
            lanes = same;
            let base = url.to_string();
            let joined = format!("{}{}", base.trim_end_matches('/'), path);
            match joined.parse() {
                Ok(u) => url = u,
                Err(err) => {
                    // Never sent to the app's root instead (its 404 would drop them).
                    for lane in &lanes {
                        if let Some(head) = self.lanes.head_mut(lane) {
                            head.attempts += 1;
                        }
                    }
                    self.in_flight += 1;
                    let _ = self.finished_tx.send(Finished {
                        lanes,
                        answer: Answer::Failed(format!("app route `{joined}` is not a URL: {err}")),
                    });
                    return;
                }
            }
        }
        if let Some(ct) = lanes
            .first()
            .and_then(|l| self.lanes.head(l))
            .and_then(|h| h.content_type.clone())
        {
            content_type = ct;
        }
        let mut bodies: Vec<Bytes> = Vec::with_capacity(lanes.len());
        let mut entry_ids: Vec<(String, Arc<str>)> = Vec::new();
        let mut event_id = None;
        let mut topic = None;
        let mut traceparent = None;
        let mut attempt = 0;
        for lane in &lanes {
            if let Some(head) = self.lanes.head_mut(lane) {
                head.attempts += 1;
                if head.first_attempt_ms == 0 {
                    head.first_attempt_ms = first_ms;
                }
                attempt = attempt.max(head.attempts);
                if !bulk {
                    event_id = Some(head.event_id.clone());
                    topic = Some(head.topic.clone());
                    traceparent = Some(head.traceparent.clone());
                }
                bodies.push(head.payload.clone());
                if sub.spec.dapr.is_some() && bulk {
                    entry_ids.push((
                        bulk_entry_id(&head.partition, &head.id),
                        head.content_type
                            .clone()
                            .unwrap_or_else(|| Arc::from("application/json")),
                    ));
                }
            }
        }
        let body = match (&sub.spec.dapr, bulk) {
            (Some(target), true) => {
                content_type = Arc::from("application/json");
                let entries: Vec<(&str, &Bytes, &str)> = entry_ids
                    .iter()
                    .zip(&bodies)
                    .map(|((id, ct), body)| (id.as_str(), body, &**ct))
                    .collect();
                crate::dapr::deliver::bulk_body(target, &entries)
            }
            (None, true) => json_array(&bodies),
            (_, false) => bodies.pop().unwrap_or_default(),
        };
        let deliverer = self.ctx.deliverer.clone();
        let endpoints = self.ctx.endpoints.clone();
        let done = self.finished_tx.clone();
        let timeout = std::time::Duration::from_millis(self.ctx.sub.spec.timeout_ms);
        self.in_flight += 1;
        tokio::spawn(async move {
            let answer = deliverer
                .send(Outgoing {
                    url: &url,
                    body,
                    event_id: event_id.as_deref(),
                    topic: topic.as_deref(),
                    attempt,
                    traceparent: traceparent.as_deref(),
                    content_type: &content_type,
                    timeout,
                })
                .await;
            endpoints.report(endpoint, answer.healthy());
            let _ = done.send(Finished { lanes, answer });
        });
    }

    fn on_finished(&mut self, finished: Finished) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let spec = self.ctx.sub.spec.clone();
        // A Dapr app's bulk answer settles each entry on its own; an entry it leaves out
        // is retried.
        let statuses = match (&spec.dapr, spec.mode, &finished.answer) {
            (
                Some(_),
                DeliveryMode::Bulk,
                Answer::Http {
                    status,
                    outcome: Outcome::Delivered,
                    body,
                },
                // An answer without readable statuses settles nothing: every entry is retried.
            ) => Some((
                *status,
                crate::dapr::deliver::bulk_statuses(body).unwrap_or_default(),
            )),
            _ => None,
        };
        for lane in finished.lanes {
            let Some(head) = self.lanes.head_mut(&lane) else {
                continue;
            };
            let per_entry = statuses.as_ref().map(|(status, map)| {
                let entry_id = bulk_entry_id(&head.partition, &head.id);
                let outcome = match map.get(&entry_id) {
                    Some(said) => crate::deliver::status_outcome(said),
                    None => Outcome::Retry("the entry is missing from the app's statuses".into()),
                };
                Answer::Http {
                    status: *status,
                    outcome,
                    body: Bytes::new(),
                }
            });
            let answer = per_entry.as_ref().unwrap_or(&finished.answer);
            let (status, retry_reason) = match answer {
                Answer::Http {
                    outcome: Outcome::Delivered,
                    ..
                } => {
                    SubscriptionStats::bump(&self.ctx.stats.delivered);
                    self.ctx
                        .stats
                        .record_latency(now_us().saturating_sub(head.received_us));
                    self.finish(&lane, true);
                    continue;
                }
                Answer::Http {
                    outcome: Outcome::Drop(reason),
                    ..
                } => {
                    tracing::info!(subscription = %spec.name, event_id = %head.event_id, %reason, "event dropped");
                    SubscriptionStats::bump(&self.ctx.stats.dropped);
                    self.finish(&lane, true);
                    continue;
                }
                Answer::Http {
                    status,
                    outcome: Outcome::Retry(reason),
                    ..
                } => (Some(*status), reason.clone()),
                Answer::Failed(reason) => (None, reason.clone()),
            };
            head.last_status = status.or(head.last_status);
            head.last_error = Some(retry_reason);
            if head.attempts >= spec.max_attempts {
                self.exhausted(&lane);
            } else {
                SubscriptionStats::bump(&self.ctx.stats.retried);
                let delay = spec.backoff.delay_ms(head.attempts, fastrand::f64());
                let at = Instant::now() + std::time::Duration::from_millis(delay);
                self.timer_seq += 1;
                self.timers.insert((at, self.timer_seq), lane);
            }
        }
    }

    /// The head of `lane` used its last attempt: to the DLQ (ack and DLQ in one step), or
    /// dropped when the subscription keeps no DLQ.
    fn exhausted(&mut self, lane: &Arc<str>) {
        let Some(head) = self.lanes.head(lane) else {
            return;
        };
        let dead_letter_topic = self
            .ctx
            .sub
            .spec
            .dapr
            .as_ref()
            .and_then(|d| Some((d.pubsubname.clone(), d.dead_letter_topic.clone()?)));
        if let (Some((pubsub, topic)), Some(tx)) = (dead_letter_topic, &self.ctx.dead_letter_topics)
        {
            let letter = crate::dapr::deliver::DeadLetter {
                pubsub,
                topic,
                body: head.payload.clone(),
                content_type: head
                    .content_type
                    .clone()
                    .unwrap_or_else(|| Arc::from("application/json")),
            };
            match tx.try_send(letter) {
                Ok(()) => SubscriptionStats::bump(&self.ctx.stats.dead_letter_topic),
                Err(err) => {
                    tracing::warn!(error = %err, event_id = %head.event_id, "dead-letter topic queue full; the event is in the DLQ only")
                }
            }
        }
        if self.ctx.sub.spec.dead_letter {
            let op = AckOp::DeadLetter {
                partition: head.partition.clone(),
                id: head.id.clone(),
                raw: head.raw.clone(),
                failure: Failure {
                    reason: "max_attempts_exceeded".into(),
                    last_status: head.last_status,
                    last_error: head.last_error.clone(),
                    attempts: head.attempts,
                    first_attempt_ms: head.first_attempt_ms,
                    last_attempt_ms: now_ms(),
                },
            };
            SubscriptionStats::bump(&self.ctx.stats.dead_lettered);
            self.queue_ack(op);
            self.finish(lane, false);
        } else {
            SubscriptionStats::bump(&self.ctx.stats.dropped);
            self.finish(lane, true);
        }
    }

    fn queue_ack(&self, op: AckOp) {
        // The queue has room for every permit, so it is never full; it is closed only when
        // the acker has stopped, and then the entry stays pending and is delivered again.
        if let Err(err) = self.ctx.acks.try_send(op) {
            tracing::warn!(error = %err, "ack not queued; the event will be delivered again");
            self.ctx.permits.add_permits(1);
        }
    }

    /// Removes the head of `lane` (acking it when `ack`; a dead letter is queued by the
    /// caller) and readies the next event of the lane.
    fn finish(&mut self, lane: &Arc<str>, ack: bool) {
        let Some((head, more)) = self.lanes.pop(lane) else {
            return;
        };
        self.held.remove(&(head.partition.clone(), head.id.clone()));
        // The acker frees the event's permit once its ack (or dead letter) is written.
        if ack {
            self.queue_ack(AckOp::Ack {
                partition: head.partition,
                id: head.id,
            });
        }
        if !more {
            self.advance_if_idle(lane);
        }
        self.ctx
            .stats
            .in_flight
            .fetch_sub(1, AtomicOrdering::Relaxed);
        if more {
            self.ready.push_back(lane.clone());
        }
    }
}

/// A bulk entry's id for a Dapr app: stream ids repeat across partitions, so the
/// partition is part of it.
fn bulk_entry_id(partition: &str, id: &str) -> String {
    format!("{partition}/{id}")
}

/// The Redis key of a lane's next expected number (a lane is `partition \u{1f} key`).
fn state_key(lane: &str, subscription: &str) -> String {
    let (partition, key) = lane.split_once('\u{1f}').unwrap_or((lane, ""));
    sequence_state_key(partition, subscription, key)
}

/// The partition of a lane.
fn partition_of_lane(lane: &str) -> &str {
    lane.split_once('\u{1f}')
        .map_or(lane, |(partition, _)| partition)
}

/// The reorder limits of one shard: its share of the subscription's `max_held`, never more
/// than half of the read-ahead budget (held events keep their read permits, and reading
/// must go on so that the missing events can arrive).
fn reorder_limits(ctx: &ShardContext) -> ReorderLimits {
    let spec = &ctx.sub.spec.reorder;
    let budget = spec.max_held.min(ctx.sub.spec.max_in_flight / 2).max(1);
    ReorderLimits {
        timeout: std::time::Duration::from_millis(spec.timeout_ms),
        on_timeout: match spec.on_timeout {
            GapPolicy::DeadLetter => OnTimeout::DeadLetter,
            GapPolicy::Release => OnTimeout::Release,
        },
        max_held_per_key: spec.max_held_per_key,
        max_held: (budget / ctx.shards.max(1)).max(1),
        start: match spec.start {
            ReorderStart::At(n) => Some(n),
            ReorderStart::Named(NamedStart::FirstSeen) => None,
        },
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Joins JSON documents into one JSON array.
fn json_array(items: &[Bytes]) -> Bytes {
    let len = items.iter().map(Bytes::len).sum::<usize>() + items.len() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_joins_documents() {
        let items = [
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        let joined = json_array(&items);
        let parsed: serde_json::Value = serde_json::from_slice(&joined).expect("json");
        assert_eq!(parsed, serde_json::json!([{"a":1},{"b":2}]));
        assert_eq!(&json_array(&[])[..], b"[]");
    }
}
