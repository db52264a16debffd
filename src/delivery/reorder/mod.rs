//! The reorder buffer of `ordering = "sequence"`: per key, events are released in ascending
//! `metadata.sequence` without gaps. An event ahead of the next expected number is held
//! until the missing ones arrive; a gap left open past the timeout (or a buffer over its
//! limits) is closed by the subscription's policy: its held events are dead-lettered, or
//! released in order with the missing numbers skipped. Numbers below the next expected are
//! duplicates, or stragglers when they fall in a range skipped by a release.
//!
//! Pure logic with an injected clock: the caller feeds events and the time, and acts on
//! what comes back (deliver, dead-letter, ack). Deadlines are one ordered index, so one
//! task serves every key's timer.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What happens to a gap that stays open past the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// The held events go to the dead-letter queue.
    DeadLetter,
    /// The held events are delivered in order, the missing numbers skipped.
    Release,
}

/// Why a gap was closed before it filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The gap stayed open for the whole timeout (`sequence_gap_timeout`).
    Timeout,
    /// A limit of held events was reached (`reorder_buffer_full`).
    BufferFull,
}

impl CloseReason {
    /// The reason recorded with dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "sequence_gap_timeout",
            Self::BufferFull => "reorder_buffer_full",
        }
    }
}

/// The limits and policy of one subscription's buffer.
#[derive(Debug, Clone)]
pub struct ReorderLimits {
    /// How long a gap may stay open.
    pub timeout: Duration,
    /// What closes an expired gap.
    pub on_timeout: OnTimeout,
    /// Most events held for one key.
    pub max_held_per_key: usize,
    /// Most events held in all.
    pub max_held: usize,
    /// The first number expected of a key never seen: `None` takes the first that arrives.
    pub start: Option<u64>,
}

/// A gap closed without being filled, and what to do with its events.
#[derive(Debug, PartialEq, Eq)]
pub struct ClosedGap<T> {
    /// The key.
    pub key: Arc<str>,
    /// Timeout or full buffer.
    pub reason: CloseReason,
    /// The numbers that never came, as ranges.
    pub missing: Vec<RangeInclusive<u64>>,
    /// With `release`: the held events to deliver, in order; else empty.
    pub release: Vec<T>,
    /// With `dead_letter`: the held events to dead-letter, in order; else empty.
    pub dead_letter: Vec<T>,
}

/// What becomes of an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered<T> {
    /// Deliver these now, in this order (the event, then any held run it completed).
    Deliver(Vec<T>),
    /// Held until the gap before it fills; `opened` when it opened the key's gap.
    Held {
        /// Whether nothing was held for the key before.
        opened: bool,
    },
    /// Its number is below the next expected and was not skipped: already seen.
    Duplicate(T),
    /// Its number was skipped by an earlier release: it came too late.
    LateAfterGap(T),
    /// Its number is already held: a duplicate of a held event.
    AlreadyHeld(T),
}

#[derive(Debug)]
struct KeyState<T> {
    /// The next number to deliver.
    next: u64,
    /// Events ahead of `next`, by number.
    held: BTreeMap<u64, T>,
    /// When the current gap times out (set while anything is held).
    deadline: Option<Instant>,
    /// Ranges skipped by releases, newest last (a few are kept, to tell stragglers).
    skipped: Vec<RangeInclusive<u64>>,
    /// When the key was last offered an event (or restored).
    last_seen: Instant,
}

/// Skipped ranges remembered per key.
const SKIPPED_KEPT: usize = 8;

/// The buffer of one subscription (or one shard of it).
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    limits: ReorderLimits,
    keys: HashMap<Arc<str>, KeyState<T>>,
    /// Every open gap's deadline: one index for all keys.
    deadlines: BTreeMap<(Instant, Arc<str>), ()>,
    held: usize,
}

impl<T> ReorderBuffer<T> {
    /// An empty buffer.
    pub fn new(limits: ReorderLimits) -> Self {
        Self {
            limits,
            keys: HashMap::new(),
            deadlines: BTreeMap::new(),
            held: 0,
        }
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Events held for `key`.
    pub fn held_for(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |state| state.held.len())
    }

    /// The next number expected of `key`, if it has been seen or restored.
    pub fn next_expected(&self, key: &str) -> Option<u64> {
        self.keys.get(key).map(|state| state.next)
    }

    /// Sets the next expected number of a key not yet seen (restored from the store).
    pub fn restore(&mut self, key: Arc<str>, next: u64, now: Instant) {
        self.keys.entry(key).or_insert_with(|| KeyState {
            next,
            held: BTreeMap::new(),
            deadline: None,
            skipped: Vec::new(),
            last_seen: now,
        });
    }

    /// Marks `key` as active now (so that it is not forgotten as idle).
    pub fn touch(&mut self, key: &str, now: Instant) {
        if let Some(state) = self.keys.get_mut(key) {
            state.last_seen = now;
        }
    }

    /// Forgets every key `gone` names (its partition moved away), returning the events it
    /// held: they stay pending in Redis for the new owner, and the key's next number is
    /// read back from Redis if the partition returns.
    pub fn forget(&mut self, mut gone: impl FnMut(&str) -> bool) -> Vec<T> {
        let keys: Vec<Arc<str>> = self.keys.keys().filter(|k| gone(k)).cloned().collect();
        let mut events = Vec::new();
        for key in keys {
            if let Some(state) = self.keys.remove(&key) {
                if let Some(at) = state.deadline {
                    self.deadlines.remove(&(at, key.clone()));
                }
                self.held -= state.held.len();
                events.extend(state.held.into_values());
            }
        }
        events
    }

    /// Keys known now (held or not).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Forgets the keys that hold nothing, were last offered an event before `before`, and
    /// that `busy` does not claim (say, with events still in flight); returns how many.
    /// Their next numbers are kept in the store and read back if they come again (the
    /// ranges a release skipped are not: a straggler of a forgotten key counts as a
    /// duplicate).
    pub fn evict_idle(&mut self, before: Instant, mut busy: impl FnMut(&str) -> bool) -> usize {
        let known = self.keys.len();
        self.keys
            .retain(|key, state| !state.held.is_empty() || state.last_seen >= before || busy(key));
        known - self.keys.len()
    }

    /// The earliest open gap's deadline, for the one timer that serves them all.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// Offers the event numbered `seq` of `key`. When it makes a limit overflow, the
    /// oldest gap of that scope is closed early, and comes back in `closed`.
    pub fn offer(
        &mut self,
        key: &Arc<str>,
        seq: u64,
        item: T,
        now: Instant,
        closed: &mut Vec<ClosedGap<T>>,
    ) -> Offered<T> {
        let start = self.limits.start.unwrap_or(seq);
        let state = self.keys.entry(key.clone()).or_insert_with(|| KeyState {
            next: start,
            held: BTreeMap::new(),
            deadline: None,
            skipped: Vec::new(),
            last_seen: now,
        });
        state.last_seen = now;
        if seq < state.next {
            return if state.skipped.iter().any(|r| r.contains(&seq)) {
                Offered::LateAfterGap(item)
            } else {
                Offered::Duplicate(item)
            };
        }
        if seq > state.next {
            if state.held.contains_key(&seq) {
                return Offered::AlreadyHeld(item);
            }
            state.held.insert(seq, item);
            self.held += 1;
            if state.deadline.is_none() {
                let at = now + self.limits.timeout;
                state.deadline = Some(at);
                self.deadlines.insert((at, key.clone()), ());
            }
            let opened = state.held.len() == 1;
            let over_key = state.held.len() > self.limits.max_held_per_key;
            if over_key {
                closed.push(self.close(key, CloseReason::BufferFull));
            }
            while self.held > self.limits.max_held {
                let Some((_, oldest)) = self.deadlines.keys().next().cloned() else {
                    break;
                };
                closed.push(self.close(&oldest, CloseReason::BufferFull));
            }
            return Offered::Held { opened };
        }
        // The expected one: it and the run of held events after it go now.
        let mut run = vec![item];
        state.next = seq.saturating_add(1);
        while let Some(entry) = state.held.first_entry() {
            if *entry.key() != state.next {
                break;
            }
            run.push(entry.remove());
            state.next = state.next.saturating_add(1);
        }
        self.held -= run.len() - 1;
        if run.len() > 1 {
            // The gap filled: a gap still open further on gets a fresh timeout.
            if let Some(at) = state.deadline.take() {
                self.deadlines.remove(&(at, key.clone()));
            }
            if !state.held.is_empty() {
                let at = now + self.limits.timeout;
                state.deadline = Some(at);
                self.deadlines.insert((at, key.clone()), ());
            }
        }
        Offered::Deliver(run)
    }

    /// Closes every gap whose deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<ClosedGap<T>> {
        let mut closed = Vec::new();
        while let Some((at, key)) = self.deadlines.keys().next().cloned() {
            if at > now {
                break;
            }
            closed.push(self.close(&key, CloseReason::Timeout));
        }
        closed
    }

    /// Closes the open gap of `key`: every held event goes by the policy, and the next
    /// expected number moves past the last of them.
    fn close(&mut self, key: &Arc<str>, reason: CloseReason) -> ClosedGap<T> {
        let mut gap = ClosedGap {
            key: key.clone(),
            reason,
            missing: Vec::new(),
            release: Vec::new(),
            dead_letter: Vec::new(),
        };
        let Some(state) = self.keys.get_mut(key) else {
            return gap;
        };
        if let Some(at) = state.deadline.take() {
            self.deadlines.remove(&(at, key.clone()));
        }
        let held = std::mem::take(&mut state.held);
        self.held -= held.len();
        let mut expected = state.next;
        let mut events = Vec::with_capacity(held.len());
        for (seq, item) in held {
            if seq > expected {
                gap.missing.push(expected..=seq - 1);
            }
            expected = seq.saturating_add(1);
            events.push(item);
        }
        state.next = expected;
        // Remembered under both policies: a missing number that turns up later is a
        // straggler to report, not a duplicate to drop quietly.
        state.skipped.extend(gap.missing.iter().cloned());
        let excess = state.skipped.len().saturating_sub(SKIPPED_KEPT);
        state.skipped.drain(..excess);
        match self.limits.on_timeout {
            OnTimeout::Release => gap.release = events,
            OnTimeout::DeadLetter => gap.dead_letter = events,
        }
        gap
    }
}

/// How many numbers a list of missing ranges covers.
pub fn missing_count(missing: &[RangeInclusive<u64>]) -> u64 {
    missing.iter().map(|r| r.end() - r.start() + 1).sum()
}

#[cfg(test)]
mod tests;
