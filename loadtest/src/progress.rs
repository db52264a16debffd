//! Live numbers while the load runs: a progress line (offered vs achieved rate, errors,
//! running P95) and one timeline point per second for the report and the chart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::TimelinePoint;

/// Counters the workers update.
pub struct Live {
    /// Requests answered 200.
    pub ok: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
    /// Latency (µs) of the current second.
    pub interval: Mutex<Histogram<u64>>,
}

impl Live {
    /// Empty counters.
    pub fn new() -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            interval: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        }))
    }

    /// Records one answered request.
    pub fn record(&self, ok: bool, micros: u64) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.interval.lock() {
            h.saturating_record(micros.max(1));
        }
    }
}

/// Samples the counters every second until `until`, drawing the progress line unless
/// `quiet`; returns the timeline.
pub async fn run(
    live: Arc<Live>,
    start: Instant,
    until: Instant,
    offered_requests_per_sec: f64,
    batch: usize,
    quiet: bool,
) -> Vec<TimelinePoint> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let total = until.saturating_duration_since(start).as_secs().max(1);
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    tokio::time::sleep_until(start.into()).await;
    let mut timeline = Vec::new();
    let mut last_ok = 0;
    let mut last_errors = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < until {
        tick.tick().await;
        let ok = live.ok.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let (p50, p95, p99) = match live.interval.lock() {
            Ok(mut h) => {
                let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                let point = (q(0.5), q(0.95), q(0.99));
                h.reset();
                point
            }
            Err(_) => (0.0, 0.0, 0.0),
        };
        let requests = ok - last_ok;
        let failed = errors - last_errors;
        last_ok = ok;
        last_errors = errors;
        timeline.push(TimelinePoint {
            second: start.elapsed().as_secs_f64(),
            requests: requests + failed,
            errors: failed,
            p50,
            p95,
            p99,
        });
        bar.set_position(start.elapsed().as_secs());
        bar.set_message(format!(
            "offered {:.0} ev/s, achieved {} ev/s, errors {}, p95 {:.2} ms",
            offered_requests_per_sec * batch as f64,
            requests * batch as u64,
            errors,
            p95
        ));
    }
    bar.finish_and_clear();
    timeline
}
