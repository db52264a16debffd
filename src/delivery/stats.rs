//! Delivery counters and the end-to-end latency histogram of one subscription.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::metrics::{catalogue, HistogramId, Metrics, Recorded};

/// Counters updated by the shards of one subscription.
#[derive(Debug)]
pub struct SubscriptionStats {
    /// Events delivered (2xx).
    pub delivered: AtomicU64,
    /// Attempts that will be retried.
    pub retried: AtomicU64,
    /// Events moved to the DLQ.
    pub dead_lettered: AtomicU64,
    /// Events dropped (404 or DROP, or exhausted without a DLQ).
    pub dropped: AtomicU64,
    /// Events read but not for this subscription (acked at once).
    pub unmatched: AtomicU64,
    /// Events past their time to live (Dapr's `ttlInSeconds`), acked undelivered.
    pub expired: AtomicU64,
    /// Events no routing rule of a Dapr subscription took and no default path (acked).
    pub unrouted: AtomicU64,
    /// Events published to a Dapr subscription's `deadLetterTopic`.
    pub dead_letter_topic: AtomicU64,
    /// Events read and not yet finished.
    pub in_flight: AtomicU64,
    /// Sequence ordering: what the reorder buffer saw.
    pub sequence: SequenceStats,
    /// Received by evrouter → subscriber's 2xx, in microseconds.
    pub latency: HistogramId,
}

impl SubscriptionStats {
    /// The counters of subscription `name`, its latency histogram registered in `metrics`.
    pub fn new(metrics: &Metrics, name: &str) -> Self {
        Self {
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            dead_letter_topic: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            sequence: SequenceStats::default(),
            latency: metrics.histogram(&catalogue::DELIVERY_LATENCY_SECONDS, &[name]),
        }
    }
}

/// Counters of the reorder buffer (`ordering = "sequence"`).
#[derive(Debug, Default, Serialize)]
pub struct SequenceStats {
    /// Events held now, waiting for a gap to fill.
    pub held: AtomicU64,
    /// Gaps opened (an event arrived ahead of the next expected number).
    pub gaps_opened: AtomicU64,
    /// Gaps filled by the missing events (nothing of the key held any more).
    pub gaps_filled: AtomicU64,
    /// Gaps closed by the timeout.
    pub gaps_timed_out: AtomicU64,
    /// Gaps closed early because a limit of held events was reached.
    pub gaps_closed_full: AtomicU64,
    /// Numbers skipped by `release`.
    pub skipped: AtomicU64,
    /// Events whose number was already delivered or held: acked, not delivered.
    pub duplicates: AtomicU64,
    /// Events whose number a `release` had skipped: recorded in the DLQ, not delivered.
    pub late_after_gap: AtomicU64,
    /// Events without `metadata.sequence`: delivered in key order.
    pub unsequenced: AtomicU64,
}

/// A snapshot for `/v1/stats`.
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    /// Delivered.
    pub delivered: u64,
    /// Retried attempts.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Dropped.
    pub dropped: u64,
    /// Not for this subscription.
    pub unmatched: u64,
    /// Past their time to live.
    pub expired: u64,
    /// Taken by no routing rule (Dapr subscriptions).
    pub unrouted: u64,
    /// Published to a Dapr `deadLetterTopic`.
    pub dead_letter_topic: u64,
    /// In flight on this instance.
    pub in_flight: u64,
    /// Entries not yet read by the subscription's group, over all partitions.
    pub lag: Option<u64>,
    /// End-to-end latency percentiles in milliseconds, since start.
    pub latency_ms: Percentiles,
    /// The same over about the last minute.
    pub latency_ms_last_minute: Percentiles,
    /// The reorder buffer's counters (subscriptions with `ordering = "sequence"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<serde_json::Value>,
}

/// Latency percentiles in milliseconds (within the histogram's 1%).
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: u64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(recorded: &Recorded) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(recorded.quantile(0.50)),
            p95: ms(recorded.quantile(0.95)),
            p99: ms(recorded.quantile(0.99)),
            p999: ms(recorded.quantile(0.999)),
            max: ms(recorded.max()),
            count: recorded.count(),
        }
    }
}

impl SubscriptionStats {
    /// Records one delivery's end-to-end latency (on the calling thread: no shared lock).
    pub fn record_latency(&self, micros: u64) {
        self.latency.record(micros);
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot; `lag` is filled by the caller from Redis; `sequence` adds the reorder
    /// buffer's counters.
    pub fn snapshot(&self, lag: Option<u64>, sequence: bool, metrics: &Metrics) -> StatsSnapshot {
        let latency = Percentiles::of(&self.latency.snapshot());
        let latency_last_minute = Percentiles::of(&metrics.last_minute(self.latency));
        StatsSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            unmatched: self.unmatched.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            unrouted: self.unrouted.load(Ordering::Relaxed),
            dead_letter_topic: self.dead_letter_topic.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            lag,
            latency_ms: latency,
            latency_ms_last_minute: latency_last_minute,
            sequence: sequence.then(|| serde_json::to_value(&self.sequence).unwrap_or_default()),
        }
    }
}
