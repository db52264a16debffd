//! Handoffs: which shards and readers still have work in flight for a partition being
//! handed over. A handoff begins with every live shard and reader owing a confirmation; a
//! shard confirms once nothing of the partition is in flight with it and its acker has
//! written everything it queued before (a barrier in the ack queue); a reader once no read
//! naming the partition is in flight (entries such a read hands this instance stay pending
//! to it, and the next owner claims them after the release). The lease keeper releases the
//! partition when nobody owes one. Touched on ownership changes only, never per event.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::model::sync::lock;
use crate::store::lease::{Drains, HandoffBoard};

/// The shards of every running subscription, and what each owes to each handoff.
#[derive(Debug, Default)]
pub struct Handoffs {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    shards: HashSet<u64>,
    owed: HashMap<Arc<str>, HashSet<u64>>,
}

impl HandoffBoard for Handoffs {
    /// A shard or reader starts: its id.
    fn join(&self) -> u64 {
        let mut inner = lock(&self.inner);
        inner.next_id += 1;
        let id = inner.next_id;
        inner.shards.insert(id);
        id
    }

    /// A shard or reader stopped (everything it had in flight was answered): it owes
    /// nothing.
    fn leave(&self, shard: u64) {
        let mut inner = lock(&self.inner);
        inner.shards.remove(&shard);
        for owed in inner.owed.values_mut() {
            owed.remove(&shard);
        }
    }

    /// A shard has nothing of `partition` in flight and its acks are written; a reader
    /// has no read of it in flight.
    fn confirm(&self, partition: &str, shard: u64) {
        if let Some(owed) = lock(&self.inner).owed.get_mut(partition) {
            owed.remove(&shard);
        }
    }
}

impl Drains for Handoffs {
    fn begin(&self, partition: &Arc<str>) {
        let mut inner = lock(&self.inner);
        let shards = inner.shards.clone();
        inner.owed.insert(partition.clone(), shards);
    }

    fn drained(&self, partition: &str) -> bool {
        lock(&self.inner)
            .owed
            .get(partition)
            .is_none_or(HashSet::is_empty)
    }

    fn end(&self, partition: &str) {
        lock(&self.inner).owed.remove(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_drained_once_every_shard_has_confirmed_or_left() {
        let handoffs = Handoffs::default();
        let (a, b) = (handoffs.join(), handoffs.join());
        let p: Arc<str> = Arc::from("evr:{order.1}");
        handoffs.begin(&p);
        assert!(!handoffs.drained(&p));
        handoffs.confirm(&p, a);
        assert!(!handoffs.drained(&p), "b still owes");
        // A shard joining after the handoff began never held the partition.
        let c = handoffs.join();
        handoffs.leave(b);
        assert!(handoffs.drained(&p));
        handoffs.end(&p);
        handoffs.begin(&p);
        assert!(!handoffs.drained(&p), "a and c owe the new handoff");
        handoffs.confirm(&p, a);
        handoffs.confirm(&p, c);
        assert!(handoffs.drained(&p));
    }
}
