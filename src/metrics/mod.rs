//! Built-in metrics: histograms recorded per thread without a shared lock ([`histogram`]),
//! labelled counters, and the register of both that `/metrics` and `/v1/stats` read; every
//! metric is named in the [`catalogue`]. A floor of its own just above the model: the
//! store, publishing and delivery record here; only the HTTP layer renders.
//!
//! Labels are bounded: subscription names, endpoints and topic families come from
//! configuration or are capped ([`MAX_LABEL_VALUES`] per counter, the rest counted as
//! `other`); no event id or key is ever a label.

pub mod catalogue;
pub mod histogram;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub use catalogue::{Kind, Metric};
pub use histogram::{HistogramId, Recorded};

use crate::model::sync::lock;

/// Most distinct label values one counter keeps apart; later ones count as `other`.
pub const MAX_LABEL_VALUES: usize = 256;

/// How often the last-minute view takes a snapshot.
pub const WINDOW_STEP: Duration = Duration::from_secs(10);

/// What a histogram's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds, shown as seconds.
    Micros,
    /// Counts (batch sizes).
    Count,
}

/// One registered histogram: a metric of the catalogue with one set of labels.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its entry in the catalogue (a histogram).
    pub metric: &'static Metric,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// Where its samples are.
    pub id: HistogramId,
}

impl Series {
    /// What its values are.
    pub fn unit(&self) -> Unit {
        match self.metric.kind {
            Kind::Histogram(unit) => unit,
            Kind::Counter | Kind::Gauge => Unit::Count,
        }
    }
}

/// A counter with labels; values are found by their label values joined.
#[derive(Debug)]
pub struct Counter {
    /// Its entry in the catalogue: name, help, label names.
    pub metric: &'static Metric,
    values: DashMap<String, Arc<AtomicU64>>,
}

impl Counter {
    fn new(metric: &'static Metric) -> Self {
        debug_assert_eq!(metric.kind, Kind::Counter, "{}", metric.name);
        Self {
            metric,
            values: DashMap::new(),
        }
    }

    /// Adds `n` under `values` (one per label name).
    pub fn add(&self, values: &[&str], n: u64) {
        self.cell(values).fetch_add(n, Ordering::Relaxed);
    }

    /// The cell of `values`, to keep and bump without a lookup.
    pub fn cell(&self, values: &[&str]) -> Arc<AtomicU64> {
        let key = values.join(SEPARATOR);
        if let Some(cell) = self.values.get(&key) {
            return cell.clone();
        }
        let key = if self.values.len() >= MAX_LABEL_VALUES {
            vec!["other"; values.len()].join(SEPARATOR)
        } else {
            key
        };
        self.values.entry(key).or_default().clone()
    }

    /// Every label set with its value.
    pub fn values(&self) -> Vec<(Vec<String>, u64)> {
        let mut all: Vec<(Vec<String>, u64)> = self
            .values
            .iter()
            .map(|e| {
                let labels = e.key().split(SEPARATOR).map(str::to_string).collect();
                (labels, e.value().load(Ordering::Relaxed))
            })
            .collect();
        all.sort();
        all
    }
}

/// Joins label values in a counter's key (never part of a topic, name or reason).
const SEPARATOR: &str = "\u{1f}";

/// Counters of the publish path.
#[derive(Debug)]
pub struct PublishCounters {
    /// Events stored, by topic family and API.
    pub published: Counter,
    /// Requests refused, by reason (the error code) and API.
    pub rejected: Counter,
}

/// A snapshot of every histogram, taken at one time.
type Window = (Instant, Vec<(HistogramId, Recorded)>);

/// Every metric of one instance.
#[derive(Debug)]
pub struct Metrics {
    series: Mutex<Vec<Series>>,
    /// Publish-latency histograms by topic family and API (found without the series lock).
    publish_durations: DashMap<String, HistogramId>,
    /// Snapshots of every histogram, newest last, one per [`WINDOW_STEP`].
    windows: Mutex<VecDeque<Window>>,
    /// Publishing.
    pub publish: PublishCounters,
    /// Requests refused for want of a valid token (401) or of a right (403), by reason and
    /// API.
    pub refused: Counter,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            series: Mutex::new(Vec::new()),
            publish_durations: DashMap::new(),
            windows: Mutex::new(VecDeque::new()),
            publish: PublishCounters {
                published: Counter::new(&catalogue::PUBLISHED),
                rejected: Counter::new(&catalogue::REJECTED),
            },
            refused: Counter::new(&catalogue::REQUESTS_REFUSED),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    /// The histogram `metric` with the label `values` (one per label name of the
    /// catalogue's entry): registered once, the same id after.
    pub fn histogram(&self, metric: &'static Metric, values: &[&str]) -> HistogramId {
        debug_assert!(
            matches!(metric.kind, Kind::Histogram(_)),
            "{} is not a histogram",
            metric.name
        );
        debug_assert_eq!(metric.labels.len(), values.len(), "{}", metric.name);
        let labels: Vec<(&'static str, String)> = metric
            .labels
            .iter()
            .zip(values)
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        let mut series = lock(&self.series);
        if let Some(s) = series
            .iter()
            .find(|s| s.metric == metric && s.labels == labels)
        {
            return s.id;
        }
        let id = HistogramId::new();
        series.push(Series { metric, labels, id });
        id
    }

    /// A publish request through `api` (`native`, `dapr`) stored `events` events of
    /// `topic`; it began at `started`.
    pub fn published(&self, api: &'static str, topic: &str, started: Instant, events: usize) {
        let family = topic.split('.').next().unwrap_or(topic);
        let key = format!("{family}{SEPARATOR}{api}");
        let id = match self.publish_durations.get(&key) {
            Some(id) => *id,
            None => {
                let family = if self.publish_durations.len() >= MAX_LABEL_VALUES {
                    "other"
                } else {
                    family
                };
                let id = self.histogram(&catalogue::PUBLISH_DURATION_SECONDS, &[family, api]);
                *self.publish_durations.entry(key).or_insert(id)
            }
        };
        id.record(started.elapsed().as_micros() as u64);
        self.publish.published.add(&[family, api], events as u64);
    }

    /// A publish request through `api` was refused with `reason` (its error code).
    pub fn rejected(&self, api: &'static str, reason: &str) {
        self.publish.rejected.add(&[reason, api], 1);
    }

    /// A request through `api` was refused for `reason` (`unauthenticated`, `forbidden`).
    pub fn refused(&self, reason: &'static str, api: &'static str) {
        self.refused.add(&[reason, api], 1);
    }

    /// Every registered histogram.
    pub fn series(&self) -> Vec<Series> {
        lock(&self.series).clone()
    }

    /// Takes the snapshot of the last-minute view, keeping a minute of them (run every
    /// [`WINDOW_STEP`]).
    pub fn step(&self) {
        let now = Instant::now();
        let snapshot: Vec<(HistogramId, Recorded)> = self
            .series()
            .into_iter()
            .map(|s| (s.id, s.id.snapshot()))
            .collect();
        let mut windows = lock(&self.windows);
        windows.push_back((now, snapshot));
        while windows
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(60))
        {
            windows.pop_front();
        }
    }

    /// What `id` recorded over about the last minute (since the oldest snapshot kept; since
    /// start during the first minute).
    pub fn last_minute(&self, id: HistogramId) -> Recorded {
        let now = id.snapshot();
        let windows = lock(&self.windows);
        let earlier = windows
            .front()
            .and_then(|(_, all)| all.iter().find(|(i, _)| *i == id));
        match earlier {
            Some((_, earlier)) => now.since(earlier),
            None => now,
        }
    }

    /// Time since this instance's metrics began.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The time and size of one kind of Redis round trip (`write`, `read`, `ack`).
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    /// Seconds from sending to the answer.
    pub duration: HistogramId,
    /// Entries in the call.
    pub size: HistogramId,
}

impl RoundTrip {
    /// Records one round trip that began at `started` and carried `entries`.
    pub fn record(&self, started: Instant, entries: usize) {
        self.duration.record(started.elapsed().as_micros() as u64);
        self.size.record(entries as u64);
    }
}

impl Metrics {
    /// The round-trip histograms of `op`.
    pub fn round_trip(&self, op: &'static str) -> RoundTrip {
        RoundTrip {
            duration: self.histogram(&catalogue::REDIS_ROUND_TRIP_SECONDS, &[op]),
            size: self.histogram(&catalogue::REDIS_BATCH_ENTRIES, &[op]),
        }
    }
}

/// An endpoint as a label: without user information or query (they can hold secrets).
pub fn endpoint_label(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => url.to_string(),
    }
}

/// Runs [`Metrics::step`] every [`WINDOW_STEP`] until the task is aborted.
pub fn spawn_windows(metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WINDOW_STEP);
        loop {
            tick.tick().await;
            metrics.step();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Metric = Metric {
        name: "x_seconds",
        kind: Kind::Histogram(Unit::Micros),
        labels: &["s"],
        help: "x",
    };

    const Y: Metric = Metric {
        name: "y_seconds",
        kind: Kind::Histogram(Unit::Micros),
        labels: &[],
        help: "y",
    };

    #[test]
    fn series_are_registered_once_and_counters_cap_their_labels() {
        let metrics = Metrics::default();
        let a = metrics.histogram(&X, &["a"]);
        let again = metrics.histogram(&X, &["a"]);
        let b = metrics.histogram(&X, &["b"]);
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_eq!(metrics.series().len(), 2);

        let published = &metrics.publish.published;
        published.add(&["order", "native"], 3);
        published.add(&["order", "native"], 2);
        for n in 0..MAX_LABEL_VALUES + 10 {
            published.add(&[&format!("f{n}"), "dapr"], 1);
        }
        let values = published.values();
        assert!(values.contains(&(vec!["order".into(), "native".into()], 5)));
        assert!(values.contains(&(vec!["other".into(), "other".into()], 11)));
        assert_eq!(values.len(), MAX_LABEL_VALUES + 1);
    }

    #[test]
    fn the_last_minute_is_what_came_after_the_oldest_snapshot() {
        let metrics = Metrics::default();
        let id = metrics.histogram(&Y, &[]);
        id.record(5_000);
        assert_eq!(metrics.last_minute(id).count(), 1, "since start at first");
        metrics.step();
        id.record(7_000);
        id.record(9_000);
        let minute = metrics.last_minute(id);
        assert_eq!(minute.count(), 2);
        assert_eq!(minute.sum, 16_000);
        assert_eq!(id.snapshot().count(), 3);
    }
}
