//! A shard's or a sink's part in handing a partition over: it counts, per partition, the
//! events it has in flight, and once nothing of a draining partition is in flight with
//! it, it confirms that partition once (behind its acks, which it queues first; the
//! lease keeper may release when every participant has confirmed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::store::lease::Owned;

/// What the tracker reads of the partitions held.
pub(super) trait Drains {
    /// Whether any partition is being handed over.
    fn any_draining(&self) -> bool;
    /// Whether `partition` is being handed over (its lease still valid).
    fn draining(&self, partition: &str) -> bool;
    /// Every partition marked as being handed over.
    fn drains(&self) -> impl Iterator<Item = &Arc<str>>;
}

impl Drains for Owned {
    fn any_draining(&self) -> bool {
        Owned::any_draining(self)
    }

    fn draining(&self, partition: &str) -> bool {
        Owned::draining(self, partition)
    }

    fn drains(&self) -> impl Iterator<Item = &Arc<str>> {
        Owned::drains(self)
    }
}

/// One shard's handoff tracking.
#[derive(Debug)]
pub(super) struct HandoffTracker {
    /// This shard's id among the handoff participants.
    id: u64,
    /// Per partition, events in requests in flight.
    sending: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    /// Partitions being handed over that this shard has confirmed done with.
    confirmed: HashSet<Arc<str>>,
}

impl HandoffTracker {
    /// The tracking of participant `id`.
    pub(super) fn new(id: u64) -> Self {
        Self {
            id,
            sending: HashMap::default(),
            confirmed: HashSet::new(),
        }
    }

    /// This shard's id among the handoff participants.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// A request carrying events of `partitions` (one entry an event) was sent.
    pub(super) fn sent(&mut self, partitions: &[Arc<str>]) {
        for partition in partitions {
            *self.sending.entry(partition.clone()).or_default() += 1;
        }
    }

    /// A request carrying events of `partitions` came back (answered or failed).
    pub(super) fn returned(&mut self, partitions: &[Arc<str>]) {
        for partition in partitions {
            if let Some(n) = self.sending.get_mut(partition) {
                *n -= 1;
                if *n == 0 {
                    self.sending.remove(partition);
                }
            }
        }
    }

    /// The partitions being handed over that this shard has nothing of in flight and has
    /// not confirmed yet, now counted as confirmed; confirmations of partitions no longer
    /// draining are forgotten.
    pub(super) fn newly_drained(&mut self, owned: &impl Drains) -> Vec<Arc<str>> {
        if self.confirmed.is_empty() && !owned.any_draining() {
            // Nothing handed over: the common case, after every answer.
            return Vec::new();
        }
        self.confirmed.retain(|p| owned.draining(p));
        let due: Vec<Arc<str>> = owned
            .drains()
            .filter(|p| !self.confirmed.contains(*p))
            .filter(|p| self.sending.get(*p).copied().unwrap_or(0) == 0)
            .cloned()
            .collect();
        self.confirmed.extend(due.iter().cloned());
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions being handed over.
    #[derive(Default)]
    struct Draining(Vec<Arc<str>>);

    impl Drains for Draining {
        fn any_draining(&self) -> bool {
            !self.0.is_empty()
        }

        fn draining(&self, partition: &str) -> bool {
            self.0.iter().any(|p| &**p == partition)
        }

        fn drains(&self) -> impl Iterator<Item = &Arc<str>> {
            self.0.iter()
        }
    }

    fn partitions(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    fn names(partitions: Vec<Arc<str>>) -> Vec<String> {
        let mut names: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn nothing_is_confirmed_while_nothing_drains() {
        let mut tracker = HandoffTracker::new(7);
        assert_eq!(tracker.id(), 7);
        tracker.sent(&partitions(&["p1"]));
        assert!(tracker.newly_drained(&Draining::default()).is_empty());
    }

    #[test]
    fn a_draining_partition_is_confirmed_once_its_last_request_returns() {
        let mut tracker = HandoffTracker::new(1);
        // Two requests with events of p1 (one of them twice), one of p2.
        tracker.sent(&partitions(&["p1", "p1", "p2"]));
        tracker.sent(&partitions(&["p1"]));
        let draining = Draining(partitions(&["p1", "p2", "p3"]));
        // p3 has nothing in flight; p1 and p2 have.
        assert_eq!(names(tracker.newly_drained(&draining)), ["p3"]);
        tracker.returned(&partitions(&["p1", "p1", "p2"]));
        assert_eq!(names(tracker.newly_drained(&draining)), ["p2"]);
        tracker.returned(&partitions(&["p1"]));
        assert_eq!(names(tracker.newly_drained(&draining)), ["p1"]);
        // Each is confirmed once.
        assert!(tracker.newly_drained(&draining).is_empty());
    }

    #[test]
    fn a_partition_draining_again_is_confirmed_again() {
        let mut tracker = HandoffTracker::new(1);
        let draining = Draining(partitions(&["p1"]));
        assert_eq!(names(tracker.newly_drained(&draining)), ["p1"]);
        // The handoff ended (the partition stayed, or went): the confirmation is forgotten.
        assert!(tracker.newly_drained(&Draining::default()).is_empty());
        assert_eq!(names(tracker.newly_drained(&draining)), ["p1"]);
    }

    #[test]
    fn a_return_without_a_send_counts_nothing_below_zero() {
        let mut tracker = HandoffTracker::new(1);
        tracker.returned(&partitions(&["p1"]));
        tracker.sent(&partitions(&["p1"]));
        let draining = Draining(partitions(&["p1"]));
        assert!(tracker.newly_drained(&draining).is_empty());
        tracker.returned(&partitions(&["p1"]));
        assert_eq!(names(tracker.newly_drained(&draining)), ["p1"]);
    }
}
