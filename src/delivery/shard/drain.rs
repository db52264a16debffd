//! A shard's part in handing a partition over: once nothing of a draining partition is in
//! flight with it, it queues a barrier behind its acks; when the acker has written them the
//! shard's confirmation reaches the handoff board, and the lease keeper may release.

use std::sync::Arc;

use super::Shard;
use crate::store::acks::{AckOp, Barrier};
use crate::store::lease::HandoffBoard;

impl Shard {
    /// Confirms every partition being handed over that this shard has nothing of in
    /// flight (once its acks so far are written); forgets confirmations of partitions no
    /// longer draining.
    pub(super) fn confirm_drained(&mut self) {
        let owned = self.ctx.owned.borrow().clone();
        if self.confirmed.is_empty() && !owned.any_draining() {
            // Nothing handed over: the common case, after every answer.
            return;
        }
        self.confirmed.retain(|p| owned.draining(p));
        let due: Vec<Arc<str>> = owned
            .drains()
            .filter(|p| !self.confirmed.contains(*p))
            .filter(|p| self.sending.get(*p).copied().unwrap_or(0) == 0)
            .cloned()
            .collect();
        for partition in due {
            self.confirmed.insert(partition.clone());
            let handoffs = self.ctx.handoffs.clone();
            let shard = self.handoff_id;
            self.after_acks(Box::new(move || handoffs.confirm(&partition, shard)));
        }
    }

    /// The shard stops with nothing in flight: it owes no handoff once its acks are
    /// written.
    pub(super) fn leave_handoffs(&mut self) {
        let handoffs = self.ctx.handoffs.clone();
        let shard = self.handoff_id;
        self.after_acks(Box::new(move || handoffs.leave(shard)));
    }

    /// Runs `then` once the acks queued so far are written (at once if the acker is gone).
    pub(super) fn after_acks(&self, then: Box<dyn FnOnce() + Send + Sync>) {
        if let Err(err) = self.ctx.acks.try_send(AckOp::Barrier(Barrier(then))) {
            if let AckOp::Barrier(Barrier(then)) = err.into_inner() {
                then();
            }
        }
    }

    /// Counts the events of a request sent (`sent`) or answered.
    pub(super) fn count_sending(&mut self, partitions: &[Arc<str>], sent: bool) {
        for partition in partitions {
            if sent {
                *self.sending.entry(partition.clone()).or_default() += 1;
            } else if let Some(n) = self.sending.get_mut(partition) {
                *n -= 1;
                if *n == 0 {
                    self.sending.remove(partition);
                }
            }
        }
    }
}
