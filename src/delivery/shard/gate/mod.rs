//! The sequence gate of a shard (`ordering = "sequence"`): the reorder buffer in front of
//! the lanes, the next expected number of each key read back from Redis before a key's
//! first event is decided, recorded again once a key's lane is empty, and forgotten when
//! its partition moves. The gate decides; the shard carries out what it lets through
//! ([`Step`]) and owns the Redis read's task and the ack queue.

use std::collections::HashMap;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::Delivery;
use crate::delivery::lanes::KEY_SEPARATOR;
use crate::delivery::reorder::{
    missing_count, CloseReason, ClosedGap, Offered, OnTimeout, ReorderBuffer, ReorderLimits,
};
use crate::delivery::stats::SubscriptionStats;
use crate::delivery::subscription::Subscription;
use crate::model::subscription::{GapPolicy, NamedStart, ReorderStart};
use crate::store::acks::AckOp;
use crate::store::lease::Owned;
use crate::store::sequence::{self, sequence_state_key};

/// Most keys whose stored sequence state is read in one round trip.
const RESTORE_BATCH: usize = 512;

/// A key idle this long, with nothing held or in flight, is forgotten (its next number is
/// in Redis), so that memory follows the active keys, not all keys ever.
const IDLE_KEY: Duration = Duration::from_secs(60);

/// Offers between two sweeps for idle keys.
const SWEEP_EVERY: u32 = 4096;

/// What the gate lets through, for the shard to carry out in order.
#[derive(Debug)]
pub(super) enum Step {
    /// Its turn came: to the back of its lane.
    Enqueue(Delivery),
    /// Done with, never reaching a lane: acked, or dead-lettered with a reason and a note.
    Settle(Delivery, Option<(&'static str, String)>),
    /// A gap of this key closed: its next number is recorded if its lane is empty by then.
    AdvanceIfIdle(Arc<str>),
}

/// Keys whose stored next numbers are to be read in one round trip.
pub(super) struct RestoreBatch {
    /// The keys' lanes.
    lanes: Vec<Arc<str>>,
    /// The Redis keys: each lane's state in this generation, then in the one before a
    /// rewind.
    keys: Vec<String>,
    /// Whether to read only once the acks queued so far are written.
    pub(super) after_acks: bool,
}

/// A key's stored next number read back: the lane, its number in this generation, and
/// whether the generation before a rewind had one.
pub(super) type Restored = (Arc<str>, Option<u64>, bool);

/// One shard's sequence gate.
pub(super) struct SequenceGate {
    buffer: ReorderBuffer<Delivery>,
    stats: Arc<SubscriptionStats>,
    /// The subscription's name.
    name: String,
    /// How many times it was rewound: the generation of its sequence state.
    generation: i64,
    /// Where a key with no stored number starts.
    start: ReorderStart,
    /// Whether the subscription keeps a DLQ.
    dead_letter: bool,
    /// This shard's part of the shared "held now" gauge.
    held_reported: u64,
    /// Events of keys whose stored next number is being read, in arrival order, and the
    /// keys still to ask for.
    restoring: HashMap<Arc<str>, Vec<Delivery>>,
    to_restore: Vec<Arc<str>>,
    restore_in_flight: bool,
    restored_tx: mpsc::UnboundedSender<Vec<Restored>>,
    restored_rx: mpsc::UnboundedReceiver<Vec<Restored>>,
    offers_since_sweep: u32,
    /// The partitions held at the last ownership change.
    owned_before: Arc<Owned>,
    /// Keys were forgotten since the last read of stored sequence state: the next read
    /// waits for the acks queued so far, so that it sees this shard's own last numbers.
    restore_after_acks: bool,
}

impl SequenceGate {
    /// The gate of one shard of `sub`, counting into `stats`.
    pub(super) fn new(
        sub: &Subscription,
        limits: ReorderLimits,
        stats: Arc<SubscriptionStats>,
    ) -> Self {
        let (restored_tx, restored_rx) = mpsc::unbounded_channel();
        Self {
            buffer: ReorderBuffer::new(limits),
            stats,
            name: sub.spec.name.clone(),
            generation: sub.rewinds,
            start: sub.spec.reorder.start,
            dead_letter: sub.spec.dead_letter,
            held_reported: 0,
            restoring: HashMap::new(),
            to_restore: Vec::new(),
            restore_in_flight: false,
            restored_tx,
            restored_rx,
            offers_since_sweep: 0,
            owned_before: Arc::new(Owned::default()),
            restore_after_acks: false,
        }
    }

    /// Takes an event at `now` and says what goes on. An event of a key not seen since
    /// the shard started waits: its next number may be kept in Redis (from before a
    /// restart or a takeover), to be read before deciding anything.
    pub(super) fn offer(&mut self, delivery: Delivery, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let stats = &self.stats.sequence;
        let Some(seq) = delivery.sequence else {
            SubscriptionStats::bump(&stats.unsequenced);
            steps.push(Step::Enqueue(delivery));
            return steps;
        };
        let lane = delivery.lane.clone();
        if self.buffer.next_expected(&lane).is_none() {
            match self.restoring.get_mut(&lane) {
                Some(waiting) => waiting.push(delivery),
                None => {
                    self.restoring.insert(lane.clone(), vec![delivery]);
                    self.to_restore.push(lane);
                }
            }
            return steps;
        }
        let mut closed = Vec::new();
        match self.buffer.offer(&lane, seq, delivery, now, &mut closed) {
            Offered::Deliver(run) => {
                // The gap is filled once nothing of the key is held any more.
                if run.len() > 1 && self.buffer.held_for(&lane) == 0 {
                    SubscriptionStats::bump(&stats.gaps_filled);
                }
                steps.extend(run.into_iter().map(Step::Enqueue));
            }
            Offered::Held { opened } => {
                if opened {
                    SubscriptionStats::bump(&stats.gaps_opened);
                }
            }
            Offered::Duplicate(delivery) | Offered::AlreadyHeld(delivery) => {
                SubscriptionStats::bump(&stats.duplicates);
                steps.push(Step::Settle(delivery, None));
            }
            Offered::LateAfterGap(delivery) => {
                SubscriptionStats::bump(&stats.late_after_gap);
                let note = format!("sequence {seq} arrived after its gap was skipped");
                let dead_letter = self.dead_letter.then_some(("late_after_gap", note));
                steps.push(Step::Settle(delivery, dead_letter));
            }
        }
        self.close_gaps(closed, &mut steps);
        self.count_held();
        self.offers_since_sweep += 1;
        steps
    }

    /// Once every few thousand offers: forgets the keys that hold nothing, have nothing in
    /// a lane (`busy`) or being read back, and have seen no event for [`IDLE_KEY`].
    pub(super) fn sweep_if_due(&mut self, now: Instant, busy: impl Fn(&str) -> bool) {
        if self.offers_since_sweep < SWEEP_EVERY {
            return;
        }
        self.offers_since_sweep = 0;
        let Some(before) = now.checked_sub(IDLE_KEY) else {
            return;
        };
        let restoring = &self.restoring;
        self.buffer
            .evict_idle(before, |key| busy(key) || restoring.contains_key(key));
    }

    /// The next batch of keys seen for the first time whose stored numbers are to be read,
    /// one batch at a time.
    pub(super) fn next_restore_batch(&mut self) -> Option<RestoreBatch> {
        if self.restore_in_flight || self.to_restore.is_empty() {
            return None;
        }
        let take = self.to_restore.len().min(RESTORE_BATCH);
        let lanes: Vec<Arc<str>> = self.to_restore.drain(..take).collect();
        let (subscription, generation) = (&self.name, self.generation);
        // After a rewind, also the generation before: a key it knew had events before the
        // rewind, and starts again at its first rewound event.
        let keys: Vec<String> = lanes
            .iter()
            .map(|lane| state_key(lane, subscription, generation))
            .chain(
                lanes
                    .iter()
                    .filter(|_| generation > 0)
                    .map(|lane| state_key(lane, subscription, generation - 1)),
            )
            .collect();
        self.restore_in_flight = true;
        Some(RestoreBatch {
            lanes,
            keys,
            after_acks: std::mem::take(&mut self.restore_after_acks),
        })
    }

    /// Reads a batch's stored numbers from Redis on a task of its own (after `written`,
    /// when given), retrying until it succeeds or `stop` turns; the result comes back
    /// through [`SequenceGate::restored`].
    pub(super) fn read_back(
        &self,
        batch: RestoreBatch,
        mut conn: redis::aio::ConnectionManager,
        mut stop: watch::Receiver<bool>,
        written: Option<oneshot::Receiver<()>>,
    ) {
        let done = self.restored_tx.clone();
        let RestoreBatch { lanes, keys, .. } = batch;
        tokio::spawn(async move {
            if let Some(written) = written {
                // Dropped unsent only when the acker has stopped: read all the same.
                let _ = written.await;
            }
            let mut backoff = Duration::from_millis(50);
            let values = loop {
                match sequence::read_next(&mut conn, &keys).await {
                    Ok(values) => break values,
                    Err(err) => {
                        // Deciding without the stored number could break the order: wait.
                        tracing::warn!(error = %err, "could not read sequence state; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let n = lanes.len();
            let restored = lanes
                .into_iter()
                .enumerate()
                .map(|(i, lane)| {
                    let before = values.get(n + i).copied().flatten().is_some();
                    (lane, values.get(i).copied().flatten(), before)
                })
                .collect();
            let _ = done.send(restored);
        });
    }

    /// The next batch of stored numbers read back.
    pub(super) async fn restored(&mut self) -> Option<Vec<Restored>> {
        self.restored_rx.recv().await
    }

    /// A read of stored numbers came back: the next batch may go.
    pub(super) fn restore_finished(&mut self) {
        self.restore_in_flight = false;
    }

    /// Applies a key's stored next number and hands back the events that waited for it,
    /// to be offered again in their order; `None` when the key's partition went away
    /// meanwhile.
    pub(super) fn take_restored(
        &mut self,
        lane: Arc<str>,
        next: Option<u64>,
        rewound: bool,
        now: Instant,
    ) -> Option<Vec<Delivery>> {
        let waiting = self.restoring.remove(&lane)?;
        // A key known before a rewind starts at its first rewound event: the numbers
        // before the rewind point are not coming again.
        let first_rewound = waiting.iter().filter_map(|d| d.sequence).min();
        if let Some(next) = next.or(first_rewound.filter(|_| rewound)) {
            self.buffer.restore(lane, next, now);
        }
        Some(waiting)
    }

    /// Marks the key of an event whose key's stored state was read as known: when nothing
    /// was stored, the key starts now, by `start`, so that its next events are not read
    /// back again.
    pub(super) fn start_key(&mut self, delivery: &Delivery, now: Instant) {
        if self.buffer.next_expected(&delivery.lane).is_some() {
            return;
        }
        if let Some(seq) = delivery.sequence {
            let first = match self.start {
                ReorderStart::At(n) => n,
                ReorderStart::Named(NamedStart::FirstSeen) => seq,
            };
            self.buffer.restore(delivery.lane.clone(), first, now);
        }
    }

    /// The record of a key's next number, once nothing of it is left in a lane (the
    /// caller checks): every event below that number is then done with (delivered,
    /// dropped or dead-lettered, and its ack or dead letter queued before this). Held
    /// events are above it and stay pending.
    pub(super) fn advance_if_idle(&mut self, lane: &Arc<str>, now: Instant) -> Option<AckOp> {
        let next = self.buffer.next_expected(lane)?;
        // Written only while the lease is this instance's, checked by the script that
        // writes it (not here, where a lapse of the local validity under load would lose
        // the number of an event delivered and acked): after the lease moved, a dead letter
        // of ours may have been refused and its entry left to the new owner, which must
        // not find it counted as done.
        let partition = partition_of_lane(lane);
        // Not forgotten as idle before this is written.
        self.buffer.touch(lane, now);
        Some(AckOp::Advance {
            partition: Arc::from(partition),
            key: state_key(lane, &self.name, self.generation),
            next,
        })
    }

    /// The record that a key's events up to `done` are done with (its lane goes on).
    pub(super) fn advance_past(&self, lane: &Arc<str>, done: u64) -> AckOp {
        AckOp::Advance {
            partition: Arc::from(partition_of_lane(lane)),
            key: state_key(lane, &self.name, self.generation),
            next: done.saturating_add(1),
        }
    }

    /// The partitions held changed to `owned`: forgets the sequence state of keys whose
    /// partition is gone and hands back their waiting events (they stay pending in Redis
    /// for the new owner, and the key's next number is read back from Redis if the
    /// partition returns). `busy` says whether a lane has events.
    pub(super) fn on_ownership_change(
        &mut self,
        owned: Arc<Owned>,
        busy: impl Fn(&str) -> bool,
    ) -> Vec<Delivery> {
        let before = std::mem::replace(&mut self.owned_before, owned.clone());
        // Renewals publish a new set every round: look at the keys only when a partition
        // held before is not held now, or held under a new tenure (lost and taken again
        // between two looks: another owner may have moved its keys on meanwhile).
        let kept = |p: &str| owned.holds(p) && owned.tenure(p) == before.tenure(p);
        if before.partitions().all(|p| kept(p)) {
            return Vec::new();
        }
        // A key of a partition being handed over keeps its state while an event of it is
        // in a lane (in flight, or waiting to be let go): its next number is still
        // recorded once the lane empties. A partition whose lease lapsed locally keeps
        // everything: if it is renewed, nobody else has moved its keys on.
        let lost = |lane: &str| {
            let partition = partition_of_lane(lane);
            let tenure = owned.tenure(partition);
            tenure.is_none()
                || tenure != before.tenure(partition)
                || (owned.draining(partition) && !busy(lane))
        };
        let mut dropped = self.buffer.forget(lost);
        let gone: Vec<Arc<str>> = self.restoring.keys().filter(|l| lost(l)).cloned().collect();
        for lane in gone {
            dropped.extend(self.restoring.remove(&lane).unwrap_or_default());
        }
        self.restore_after_acks = true;
        dropped
    }

    /// Forgets the state of the key of `lane`, whose partition moved to another instance,
    /// and hands back its held events (they will be read again).
    pub(super) fn forget_lane(&mut self, lane: &Arc<str>) -> Vec<Delivery> {
        // Its next number moved past the events dropped here.
        let dropped = self.buffer.forget(|key| key == &**lane);
        self.restore_after_acks = true;
        dropped
    }

    /// Closes the gaps whose time is up by `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let closed = self.buffer.expire(now);
        self.close_gaps(closed, &mut steps);
        self.count_held();
        steps
    }

    /// When the next gap's time is up.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.buffer.next_deadline()
    }

    /// What to do with gaps the reorder buffer closed without their missing events.
    fn close_gaps(&mut self, closed: Vec<ClosedGap<Delivery>>, steps: &mut Vec<Step>) {
        for gap in closed {
            let stats = &self.stats.sequence;
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
                tracing::info!(subscription = %self.name, key = %gap.key, %missing, reason = gap.reason.as_str(), "sequence gap skipped");
            }
            steps.extend(gap.release.into_iter().map(Step::Enqueue));
            for delivery in gap.dead_letter {
                let note = format!("missing sequence numbers {missing}");
                if self.dead_letter {
                    steps.push(Step::Settle(delivery, Some((gap.reason.as_str(), note))));
                } else {
                    SubscriptionStats::bump(&self.stats.dropped);
                    steps.push(Step::Settle(delivery, None));
                }
            }
            steps.push(Step::AdvanceIfIdle(gap.key));
        }
    }

    /// Brings the shared "held now" gauge up to date with this shard's buffer.
    pub(super) fn count_held(&mut self) {
        let now = self.buffer.held() as u64;
        let gauge = &self.stats.sequence.held;
        if now > self.held_reported {
            gauge.fetch_add(now - self.held_reported, AtomicOrdering::Relaxed);
        } else {
            gauge.fetch_sub(self.held_reported - now, AtomicOrdering::Relaxed);
        }
        self.held_reported = now;
    }

    /// Takes this shard's share out of the shared gauges as it stops (the stats outlive a
    /// worker restarted with a new spec); events still held or being read back stay
    /// pending in Redis.
    pub(super) fn leave_gauges(&mut self) {
        let waiting = self.buffer.held() + self.restoring.values().map(Vec::len).sum::<usize>();
        self.stats
            .in_flight
            .fetch_sub(waiting as u64, AtomicOrdering::Relaxed);
        self.stats
            .sequence
            .held
            .fetch_sub(self.held_reported, AtomicOrdering::Relaxed);
        self.held_reported = 0;
    }
}

/// The Redis key of a lane's next expected number (a lane is `partition \u{1f} key`) in a
/// generation of the subscription.
fn state_key(lane: &str, subscription: &str, generation: i64) -> String {
    let (partition, key) = lane.split_once(KEY_SEPARATOR).unwrap_or((lane, ""));
    sequence_state_key(partition, subscription, generation, key)
}

/// The partition of a lane.
fn partition_of_lane(lane: &str) -> &str {
    lane.split_once(KEY_SEPARATOR)
        .map_or(lane, |(partition, _)| partition)
}

/// The reorder limits of one of `shards` shards of `sub`: its share of the subscription's
/// `max_held`, never more than half of the read-ahead budget (held events keep their read
/// permits, and reading must go on so that the missing events can arrive).
pub(super) fn reorder_limits(sub: &Subscription, shards: usize) -> ReorderLimits {
    let spec = &sub.spec.reorder;
    let budget = spec.max_held.min(sub.spec.max_in_flight / 2).max(1);
    ReorderLimits {
        timeout: Duration::from_millis(spec.timeout_ms),
        on_timeout: match spec.on_timeout {
            GapPolicy::DeadLetter => OnTimeout::DeadLetter,
            GapPolicy::Release => OnTimeout::Release,
        },
        max_held_per_key: spec.max_held_per_key,
        max_held: (budget / shards.max(1)).max(1),
        start: match spec.start {
            ReorderStart::At(n) => Some(n),
            ReorderStart::Named(NamedStart::FirstSeen) => None,
        },
    }
}

#[cfg(test)]
mod tests;
