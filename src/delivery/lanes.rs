//! Per-key FIFO lanes: the events of one key wait behind the one at the head, which is the
//! only one that may be in flight. Pure bookkeeping, so it is tested and benched alone.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Between a partition and a key in the name of a keyed lane (`partition \u{1f} key`).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The name of a lane: `partition`, `separator`, `rest`, written into `buf` (reused from
/// one event to the next) and copied into one shared allocation.
pub fn lane_name(buf: &mut String, partition: &str, separator: char, rest: &str) -> Arc<str> {
    buf.clear();
    buf.push_str(partition);
    buf.push(separator);
    buf.push_str(rest);
    Arc::from(buf.as_str())
}

/// FIFO lanes keyed by entity key. Hashed with foldhash, seeded per process: several
/// lookups per event, where SipHash cost more than the bookkeeping itself.
#[derive(Debug)]
pub struct Lanes<T> {
    lanes: HashMap<Arc<str>, VecDeque<T>, foldhash::fast::RandomState>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            lanes: HashMap::default(),
        }
    }
}

impl<T> Lanes<T> {
    /// Appends `item` to its lane; returns true when it is the lane's head (ready to send).
    pub fn push(&mut self, lane: Arc<str>, item: T) -> bool {
        match self.lanes.entry(lane) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push_back(item);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::from([item]));
                true
            }
        }
    }

    /// The head of a lane.
    pub fn head(&self, lane: &str) -> Option<&T> {
        self.lanes.get(lane).and_then(VecDeque::front)
    }

    /// The head of a lane, to update.
    pub fn head_mut(&mut self, lane: &str) -> Option<&mut T> {
        self.lanes.get_mut(lane).and_then(VecDeque::front_mut)
    }

    /// Whether the lane has events.
    pub fn contains(&self, lane: &str) -> bool {
        self.lanes.contains_key(lane)
    }

    /// Removes the head; returns it and whether a next event is now the head.
    pub fn pop(&mut self, lane: &str) -> Option<(T, bool)> {
        let queue = self.lanes.get_mut(lane)?;
        let head = queue.pop_front()?;
        let more = !queue.is_empty();
        if !more {
            self.lanes.remove(lane);
        }
        Some((head, more))
    }

    /// Removes a whole lane; returns how many events it held.
    pub fn remove(&mut self, lane: &str) -> usize {
        self.lanes.remove(lane).map_or(0, |q| q.len())
    }

    /// Removes a whole lane and returns its events.
    pub fn remove_all(&mut self, lane: &str) -> Vec<T> {
        self.lanes.remove(lane).map(Vec::from).unwrap_or_default()
    }

    /// Number of lanes with events.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether no lane has events.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_name_is_its_parts_whatever_the_buffer_held_before() {
        let mut buf = String::from("a much longer name left from the event before");
        assert_eq!(
            &*lane_name(&mut buf, "evr:{order.3}", '\u{1f}', "ord_1"),
            "evr:{order.3}\u{1f}ord_1"
        );
        assert_eq!(&*lane_name(&mut buf, "p", '/', "1-2"), "p/1-2");
    }

    #[test]
    fn a_lane_releases_its_events_one_at_a_time_in_order() {
        let mut lanes = Lanes::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert!(lanes.push(a.clone(), 1));
        assert!(
            !lanes.push(a.clone(), 2),
            "second event waits behind the head"
        );
        assert!(lanes.push(b.clone(), 10), "another key is independent");
        assert!(!lanes.push(a.clone(), 3));
        assert_eq!(lanes.head("a"), Some(&1));
        assert_eq!(lanes.pop("a"), Some((1, true)));
        assert_eq!(lanes.head("a"), Some(&2));
        assert_eq!(lanes.pop("a"), Some((2, true)));
        assert_eq!(lanes.pop("a"), Some((3, false)));
        assert!(!lanes.contains("a"));
        assert_eq!(lanes.pop("a"), None);
        assert_eq!(lanes.len(), 1);
        assert_eq!(lanes.remove("b"), 1);
        assert!(lanes.is_empty());
    }

    #[test]
    fn interleaved_pushes_and_pops_keep_every_key_in_order() {
        let mut lanes = Lanes::default();
        let mut rng = fastrand::Rng::with_seed(11);
        let mut next_in: HashMap<u8, u32> = HashMap::new();
        let mut next_out: HashMap<u8, u32> = HashMap::new();
        let mut heads: Vec<u8> = Vec::new();
        for _ in 0..10_000 {
            if rng.bool() || heads.is_empty() {
                let key = rng.u8(0..20);
                let n = next_in.entry(key).or_insert(0);
                if lanes.push(Arc::from(key.to_string()), *n) {
                    heads.push(key);
                }
                *n += 1;
            } else {
                let key = heads.swap_remove(rng.usize(..heads.len()));
                let (item, more) = lanes.pop(&key.to_string()).expect("head");
                let expected = next_out.entry(key).or_insert(0);
                assert_eq!(item, *expected, "key {key} out of order");
                *expected += 1;
                if more {
                    heads.push(key);
                }
            }
        }
    }
}
