//! The run's results: rates, latency percentiles and errors, as a summary and as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

/// What the built-in subscriber saw.
#[derive(Debug, Serialize)]
pub struct EndToEnd {
    pub subscription_mode: String,
    pub published: u64,
    pub delivered_unique: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub delivered_events_per_sec: f64,
    pub latency_ms: Percentiles,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<EndToEnd>,
    pub mode: String,
    pub offered_events_per_sec: u64,
    pub achieved_events_per_sec: f64,
    pub achieved_requests_per_sec: f64,
    pub batch: usize,
    pub connections: usize,
    pub duration_secs: f64,
    pub events_ok: u64,
    pub requests_ok: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
}

impl Report {
    /// Prints a human summary.
    pub fn print(&self) {
        println!("mode               {}", self.mode);
        println!(
            "offered            {} events/s ({} per request, {} connections)",
            self.offered_events_per_sec, self.batch, self.connections
        );
        println!(
            "achieved           {:.0} events/s, {:.0} requests/s over {:.1}s",
            self.achieved_events_per_sec, self.achieved_requests_per_sec, self.duration_secs
        );
        println!(
            "latency (ms)       p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.latency_ms.p50,
            self.latency_ms.p95,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max
        );
        if !self.errors_by_status.is_empty() {
            println!("errors             {:?}", self.errors_by_status);
        }
        if let Some(e2e) = &self.end_to_end {
            println!(
                "delivered          {:.0} events/s ({} mode); published {}, delivered {}, lost {}, duplicates {}, order violations {}",
                e2e.delivered_events_per_sec,
                e2e.subscription_mode,
                e2e.published,
                e2e.delivered_unique,
                e2e.lost,
                e2e.duplicates,
                e2e.order_violations
            );
            println!(
                "end-to-end (ms)    p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                e2e.latency_ms.p50,
                e2e.latency_ms.p95,
                e2e.latency_ms.p99,
                e2e.latency_ms.p999,
                e2e.latency_ms.max
            );
        }
    }
}
