//! Handing each outcome of a shard's events to the outcome log, when there is one.

use std::sync::Arc;

use super::Shard;
use crate::delivery::outcomes::{Fate, Settled};
use crate::model::clock::now_us;

impl Shard {
    /// Records what became of the head of `lane` (before it leaves the lane).
    pub(super) fn record_outcome(
        &self,
        lane: &Arc<str>,
        fate: Fate,
        status: Option<u16>,
        error: Option<&str>,
    ) {
        let Some(log) = &self.ctx.outcomes else {
            return;
        };
        if fate == Fate::Delivered && !log.keep_delivered() {
            return;
        }
        let Some(head) = self.lanes.head(lane) else {
            return;
        };
        let now = now_us();
        log.record(Settled {
            subscription: self.ctx.name.clone(),
            partition: head.partition.clone(),
            id: head.id.clone(),
            event_id: head.event_id.clone(),
            fate,
            status,
            attempt: head.attempts,
            at_us: now,
            latency_us: now.saturating_sub(head.received_us),
            error: error
                .map(str::to_string)
                .or_else(|| head.last_error.clone().filter(|_| fate != Fate::Delivered)),
        });
    }
}
