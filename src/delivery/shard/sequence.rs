//! Sequence ordering in a shard: the reorder buffer in front of the lanes, the next
//! expected number of each key read back from Redis before a key's first event is decided,
//! recorded again once a key's lane is empty, and forgotten when its partition moves.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

use super::{Delivery, Shard, ShardContext, IDLE_KEY, RESTORE_BATCH, SWEEP_EVERY};
use crate::delivery::reorder::{
    missing_count, CloseReason, ClosedGap, Offered, OnTimeout, ReorderBuffer, ReorderLimits,
};
use crate::delivery::stats::SubscriptionStats;
use crate::model::subscription::{GapPolicy, NamedStart, ReorderStart};
use crate::store::acks::AckOp;
use crate::store::sequence::{self, sequence_state_key};

impl Shard {
    /// Sequence ordering: hands an event to the reorder buffer and acts on its answer.
    pub(super) fn offer(&mut self, delivery: Delivery) {
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
    pub(super) fn sweep_idle_keys(&mut self) {
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
    pub(super) fn restore_next_batch(&mut self) {
        if self.restore_in_flight || self.to_restore.is_empty() {
            return;
        }
        let take = self.to_restore.len().min(RESTORE_BATCH);
        let lanes: Vec<Arc<str>> = self.to_restore.drain(..take).collect();
        let subscription = self.ctx.sub.spec.name.clone();
        let generation = self.ctx.sub.rewinds;
        // After a rewind, also the generation before: a key it knew had events before the
        // rewind, and starts again at its first rewound event.
        let keys: Vec<String> = lanes
            .iter()
            .map(|lane| state_key(lane, &subscription, generation))
            .chain(
                lanes
                    .iter()
                    .filter(|_| generation > 0)
                    .map(|lane| state_key(lane, &subscription, generation - 1)),
            )
            .collect();
        let mut conn = self.ctx.store.clone();
        let done = self.restored_tx.clone();
        let mut stop = self.stop.clone();
        self.restore_in_flight = true;
        // After keys were forgotten, this shard's own numbers for them may still be
        // queued with the acker: read once they are written.
        let written = std::mem::take(&mut self.restore_after_acks).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.after_acks(Box::new(move || {
                let _ = tx.send(());
            }));
            rx
        });
        tokio::spawn(async move {
            if let Some(written) = written {
                // Dropped unsent only when the acker has stopped: read all the same.
                let _ = written.await;
            }
            let mut backoff = std::time::Duration::from_millis(50);
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
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
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

    /// Applies stored next numbers, then offers the events that waited for them.
    pub(super) fn on_restored(&mut self, restored: Vec<Restored>) {
        self.restore_in_flight = false;
        for (lane, next, rewound) in restored {
            // A key whose partition went away meanwhile has nothing waiting: skip it.
            let Some(waiting) = self.restoring.remove(&lane) else {
                continue;
            };
            // A key known before a rewind starts at its first rewound event: the numbers
            // before the rewind point are not coming again.
            let first_rewound = waiting.iter().filter_map(|d| d.sequence).min();
            let next = next.or(first_rewound.filter(|_| rewound));
            if let (Some(next), Some(buffer)) = (next, self.reorder.as_mut()) {
                buffer.restore(lane.clone(), next, Instant::now());
            }
            for delivery in waiting {
                self.offer_known(delivery);
            }
        }
    }

    /// Offers an event whose key's state is settled (known or restored).
    pub(super) fn offer_known(&mut self, delivery: Delivery) {
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
    pub(super) fn advance_if_idle(&mut self, lane: &Arc<str>) {
        if self.lanes.contains(lane) {
            return;
        }
        let Some(buffer) = self.reorder.as_mut() else {
            return;
        };
        let Some(next) = buffer.next_expected(lane) else {
            return;
        };
        // Written only while the lease is this instance's, checked by the script that
        // writes it (not here, where a lapse of the local validity under load would lose
        // the number of an event delivered and acked): after the lease moved, a dead letter
        // of ours may have been refused and its entry left to the new owner, which must
        // not find it counted as done.
        let partition = partition_of_lane(lane);
        // Not forgotten as idle before this is written.
        buffer.touch(lane, Instant::now());
        let op = AckOp::Advance {
            partition: Arc::from(partition),
            key: state_key(lane, &self.ctx.sub.spec.name, self.ctx.sub.rewinds),
            next,
        };
        if let Err(err) = self.ctx.acks.try_send(op) {
            tracing::warn!(error = %err, "sequence state not recorded");
        }
    }

    /// Records that a key's events up to `done` are done with (its lane goes on).
    pub(super) fn advance_past(&mut self, lane: &Arc<str>, done: u64) {
        if self.reorder.is_none() {
            return;
        }
        let op = AckOp::Advance {
            partition: Arc::from(partition_of_lane(lane)),
            key: state_key(lane, &self.ctx.sub.spec.name, self.ctx.sub.rewinds),
            next: done.saturating_add(1),
        };
        if let Err(err) = self.ctx.acks.try_send(op) {
            tracing::warn!(error = %err, "sequence state not recorded");
        }
    }

    /// The partitions held changed: forget the sequence state of keys whose partition is
    /// gone (their held events stay pending in Redis for the new owner, and the key's next
    /// number is read back from Redis if the partition returns).
    pub(super) fn on_ownership_change(&mut self) {
        let owned = self.ctx.owned.borrow_and_update().clone();
        let before = std::mem::replace(&mut self.owned_before, owned.clone());
        // Renewals publish a new set every round: look at the keys only when a partition
        // held before is not held now, or held under a new tenure (lost and taken again
        // between two looks: another owner may have moved its keys on meanwhile).
        let kept = |p: &str| owned.holds(p) && owned.tenure(p) == before.tenure(p);
        if before.partitions().all(|p| kept(p)) {
            return;
        }
        // A key of a partition being handed over keeps its state while an event of it is
        // in a lane (in flight, or waiting to be let go): its next number is still
        // recorded once the lane empties. A partition whose lease lapsed locally keeps
        // everything: if it is renewed, nobody else has moved its keys on.
        let lanes = &self.lanes;
        let lost = |lane: &str| {
            let partition = partition_of_lane(lane);
            let tenure = owned.tenure(partition);
            tenure.is_none()
                || tenure != before.tenure(partition)
                || (owned.draining(partition) && !lanes.contains(lane))
        };
        let mut dropped = match self.reorder.as_mut() {
            Some(buffer) => buffer.forget(lost),
            None => return,
        };
        let gone: Vec<Arc<str>> = self.restoring.keys().filter(|l| lost(l)).cloned().collect();
        for lane in gone {
            dropped.extend(self.restoring.remove(&lane).unwrap_or_default());
        }
        self.restore_after_acks = true;
        self.release_dropped(dropped);
    }

    /// Lets go of events that never reached a lane and will be read again: their read
    /// permits are freed; they stay pending in Redis.
    pub(super) fn release_dropped(&mut self, dropped: Vec<Delivery>) {
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
    pub(super) fn close_gaps(&mut self, closed: Vec<ClosedGap<Delivery>>) {
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
    pub(super) fn leave_gauges(&mut self) {
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
    pub(super) fn count_held(&mut self) {
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
}

/// A key's stored next number read back: the lane, its number in this generation, and
/// whether the generation before a rewind had one.
pub(super) type Restored = (Arc<str>, Option<u64>, bool);

/// The Redis key of a lane's next expected number (a lane is `partition \u{1f} key`) in a
/// generation of the subscription.
fn state_key(lane: &str, subscription: &str, generation: i64) -> String {
    let (partition, key) = lane.split_once('\u{1f}').unwrap_or((lane, ""));
    sequence_state_key(partition, subscription, generation, key)
}

/// The partition of a lane.
fn partition_of_lane(lane: &str) -> &str {
    lane.split_once('\u{1f}')
        .map_or(lane, |(partition, _)| partition)
}

/// The reorder limits of one shard: its share of the subscription's `max_held`, never more
/// than half of the read-ahead budget (held events keep their read permits, and reading
/// must go on so that the missing events can arrive).
pub(super) fn reorder_limits(ctx: &ShardContext) -> ReorderLimits {
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
