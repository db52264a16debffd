//! Sequence ordering in a shard: the shard's side of its sequence gate. It offers each
//! event to the gate and carries out what the gate lets through (to the lanes, acked or
//! dead-lettered), starts the reads of stored next numbers the gate asks for, records a
//! key's next number with the acks, and lets go of the events of keys the gate forgets.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

use super::gate::{Restored, Step};
use super::{Delivery, HeldKey, Shard};
use crate::store::acks::AckOp;

impl Shard {
    /// Sequence ordering: hands an event to the gate and carries out what it says.
    pub(super) fn offer(&mut self, delivery: Delivery) {
        let Some(gate) = self.gate.as_mut() else {
            self.enqueue(delivery);
            return;
        };
        let steps = gate.offer(delivery, Instant::now());
        self.carry_out(steps);
        if let Some(gate) = self.gate.as_mut() {
            let lanes = &self.lanes;
            gate.sweep_if_due(Instant::now(), |key| lanes.contains(key));
        }
    }

    /// Carries out what the gate let through, in its order.
    pub(super) fn carry_out(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Enqueue(delivery) => self.enqueue(delivery),
                Step::Settle(delivery, dead_letter) => self.settle(delivery, dead_letter),
                Step::AdvanceIfIdle(lane) => self.advance_if_idle(&lane),
            }
        }
    }

    /// Starts reading the stored next numbers of keys seen for the first time, one batch
    /// at a time.
    pub(super) fn restore_next_batch(&mut self) {
        let Some(batch) = self.gate.as_mut().and_then(|g| g.next_restore_batch()) else {
            return;
        };
        // After keys were forgotten, this shard's own numbers for them may still be
        // queued with the acker: read once they are written.
        let written = batch.after_acks.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.after_acks(Box::new(move || {
                let _ = tx.send(());
            }));
            rx
        });
        if let Some(gate) = &self.gate {
            gate.read_back(batch, self.ctx.store.clone(), self.stop.clone(), written);
        }
    }

    /// Applies stored next numbers, then offers the events that waited for them.
    pub(super) fn on_restored(&mut self, restored: Vec<Restored>) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        gate.restore_finished();
        for (lane, next, rewound) in restored {
            let Some(gate) = self.gate.as_mut() else {
                return;
            };
            // A key whose partition went away meanwhile has nothing waiting: skip it.
            let Some(waiting) = gate.take_restored(lane, next, rewound, Instant::now()) else {
                continue;
            };
            for delivery in waiting {
                self.offer_known(delivery);
            }
        }
    }

    /// Offers an event whose key's state is settled (known or restored).
    fn offer_known(&mut self, delivery: Delivery) {
        if let Some(gate) = self.gate.as_mut() {
            gate.start_key(&delivery, Instant::now());
        }
        self.offer(delivery);
    }

    /// Records a key's next number once nothing of it is left in a lane.
    pub(super) fn advance_if_idle(&mut self, lane: &Arc<str>) {
        if self.lanes.contains(lane) {
            return;
        }
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        if let Some(op) = gate.advance_if_idle(lane, Instant::now()) {
            self.record_sequence(op);
        }
    }

    /// Records that a key's events up to `done` are done with (its lane goes on).
    pub(super) fn advance_past(&mut self, lane: &Arc<str>, done: u64) {
        if let Some(gate) = &self.gate {
            let op = gate.advance_past(lane, done);
            self.record_sequence(op);
        }
    }

    /// Queues a key's next number behind the acks so far.
    fn record_sequence(&self, op: AckOp) {
        if let Err(err) = self.ctx.acks.try_send(op) {
            tracing::warn!(error = %err, "sequence state not recorded");
        }
    }

    /// The partitions held changed: the gate forgets the keys whose partition is gone,
    /// and their events are let go.
    pub(super) fn on_ownership_change(&mut self) {
        let owned = self.ctx.owned.borrow_and_update().clone();
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        let lanes = &self.lanes;
        let dropped = gate.on_ownership_change(owned, |lane| lanes.contains(lane));
        self.release_dropped(dropped);
    }

    /// Lets go of events that never reached a lane and will be read again: their read
    /// permits are freed; they stay pending in Redis.
    pub(super) fn release_dropped(&mut self, dropped: Vec<Delivery>) {
        if dropped.is_empty() {
            return;
        }
        for delivery in &dropped {
            self.held.remove(&HeldKey::of(delivery));
        }
        self.ctx.permits.add_permits(dropped.len());
        self.ctx
            .stats
            .in_flight
            .fetch_sub(dropped.len() as u64, AtomicOrdering::Relaxed);
        if let Some(gate) = self.gate.as_mut() {
            gate.count_held();
        }
    }

    /// Takes this shard's share out of the shared gauges as it stops.
    pub(super) fn leave_gauges(&mut self) {
        if let Some(gate) = self.gate.as_mut() {
            gate.leave_gauges();
        }
    }
}
