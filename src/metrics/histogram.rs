//! Latency and size histograms recorded without a shared lock: every thread records into
//! its own set of HDR histograms (behind a mutex only that thread takes while recording,
//! and a reader takes for a moment when it merges), and readers merge the threads' sets.
//! A thread that ends hands its samples to a shared set, so nothing recorded is lost.
//!
//! Values are integers: microseconds for latencies, counts for sizes. Two significant
//! digits (1% precision) from 1 to 10^8 (100 s, or a hundred million items); larger values
//! are recorded as the largest.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use crate::model::sync::lock;

/// Largest value kept apart (100 s in microseconds).
pub const MAX_VALUE: u64 = 100_000_000;

/// Significant digits kept.
const SIGFIG: u8 = 2;

/// The id of one histogram (one metric with one set of labels), unique in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistogramId(u32);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl HistogramId {
    /// A new id.
    pub fn new() -> Self {
        Self(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }

    /// Records `value` on the calling thread.
    pub fn record(self, value: u64) {
        LOCAL.with(|local| {
            let slots = local.get_or_init(Local::register);
            let mut slots = lock(&slots.0.slots);
            slot(&mut slots, self.0).record(value);
        });
    }

    /// Everything recorded so far, all threads merged.
    pub fn snapshot(self) -> Recorded {
        let mut merged = Recorded::new();
        let threads: Vec<Arc<Slots>> = lock(&REGISTRY.threads).clone();
        for thread in threads.iter().chain(std::iter::once(&REGISTRY.retired)) {
            let slots = lock(&thread.slots);
            if let Some(Some(slot)) = slots.get(self.0 as usize) {
                merged.add(slot);
            }
        }
        merged
    }
}

impl Default for HistogramId {
    fn default() -> Self {
        Self::new()
    }
}

/// What one histogram holds: the distribution, the exact sum and the largest value.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The distribution.
    pub histogram: Histogram<u64>,
    /// Sum of every value recorded (exact).
    pub sum: u64,
}

impl Recorded {
    /// Empty.
    pub fn new() -> Self {
        Self {
            // Constant, valid bounds.
            histogram: Histogram::new_with_bounds(1, MAX_VALUE, SIGFIG)
                .expect("valid histogram bounds"),
            sum: 0,
        }
    }

    fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value.clamp(1, MAX_VALUE));
        self.sum = self.sum.saturating_add(value);
    }

    /// Adds another's samples.
    pub fn add(&mut self, other: &Recorded) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// What was recorded since `earlier` (a snapshot of the same histogram taken before).
    pub fn since(&self, earlier: &Recorded) -> Recorded {
        let mut diff = self.clone();
        if diff.histogram.subtract(&earlier.histogram).is_err() {
            // Only when `earlier` is not an earlier state of the same histogram.
            return self.clone();
        }
        diff.sum = diff.sum.saturating_sub(earlier.sum);
        diff
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.value_at_quantile(q)
        }
    }

    /// The largest value (within the precision); 0 when empty.
    pub fn max(&self) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.max()
        }
    }

    /// How many values were at most each of `bounds` (ascending): cumulative bucket counts.
    pub fn cumulative(&self, bounds: &[u64]) -> Vec<u64> {
        bounds
            .iter()
            .map(|&bound| {
                if bound == 0 {
                    0
                } else {
                    self.histogram.count_between(0, bound.min(MAX_VALUE))
                }
            })
            .collect()
    }
}

impl Default for Recorded {
    fn default() -> Self {
        Self::new()
    }
}

/// One thread's histograms, by id.
#[derive(Debug, Default)]
struct Slots {
    slots: Mutex<Vec<Option<Box<Recorded>>>>,
}

fn slot(slots: &mut Vec<Option<Box<Recorded>>>, id: u32) -> &mut Recorded {
    let index = id as usize;
    if slots.len() <= index {
        slots.resize_with(index + 1, || None);
    }
    slots[index].get_or_insert_with(|| Box::new(Recorded::new()))
}

/// Every live thread's histograms, and what threads that ended left behind.
struct Registry {
    threads: Mutex<Vec<Arc<Slots>>>,
    retired: Arc<Slots>,
}

static REGISTRY: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(|| Registry {
    threads: Mutex::new(Vec::new()),
    retired: Arc::new(Slots::default()),
});

/// A thread's own set; when the thread ends, its samples move to the retired set.
struct Local(Arc<Slots>);

impl Local {
    fn register() -> Self {
        let slots = Arc::new(Slots::default());
        lock(&REGISTRY.threads).push(slots.clone());
        Self(slots)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        lock(&REGISTRY.threads).retain(|s| !Arc::ptr_eq(s, &self.0));
        let mine = std::mem::take(&mut *lock(&self.0.slots));
        let mut retired = lock(&REGISTRY.retired.slots);
        for (id, recorded) in mine.into_iter().enumerate() {
            if let Some(recorded) = recorded {
                slot(&mut retired, id as u32).add(&recorded);
            }
        }
    }
}

thread_local! {
    static LOCAL: OnceCell<Local> = const { OnceCell::new() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_record_apart_and_merge_on_read_even_after_they_end() {
        let id = HistogramId::new();
        id.record(1_000);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for v in 1..=1000u64 {
                        id.record(v * (t + 1));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
        let all = id.snapshot();
        assert_eq!(all.count(), 4001, "the ended threads' samples are kept");
        assert_eq!(all.sum, 1_000 + (1..=4).map(|t| t * 500_500).sum::<u64>());
        let p50 = all.quantile(0.5);
        // x + x/2 + x/3 + x/4 values are at most x (x <= 1000): half of 4000 at x = 960.
        assert!((945..=975).contains(&p50), "{p50}");
        assert!(all.max() >= 3_960, "{}", all.max());
        assert_eq!(HistogramId::new().snapshot().count(), 0);
    }

    #[test]
    fn cumulative_counts_and_differences() {
        let id = HistogramId::new();
        for v in [50, 150, 900, 20_000, 500_000_000] {
            id.record(v);
        }
        let before = id.snapshot();
        assert_eq!(
            before.cumulative(&[100, 1_000, 10_000, 1_000_000_000]),
            vec![1, 3, 3, 5],
            "values above the range count as the largest"
        );
        id.record(70);
        let after = id.snapshot();
        let new = after.since(&before);
        assert_eq!(new.count(), 1);
        assert_eq!(new.sum, 70);
        assert_eq!(new.quantile(0.99), 70);
    }
}
