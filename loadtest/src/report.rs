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
    /// Deliveries the sink could not read as one of its events.
    pub unexpected: u64,
    pub delivered_events_per_sec: f64,
    pub latency_ms: Percentiles,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::chaos::ChaosLog>,
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
    /// Scenario (`single-topic` or `seed-mix`).
    pub scenario: String,
    /// In `--raw-redis` mode: entries read (XREADGROUP) and acked (XACK) per second while
    /// they were written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_read_events_per_sec: Option<f64>,
    /// CPU seconds used by evrouter and Redis (when started with `--spawn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<crate::spawn::CpuSeconds>,
    /// Publish latency percentiles, one point per second of the run.
    pub timeline: Vec<TimelinePoint>,
    /// evrouter's own histograms over the run (warm-up and drain included), from
    /// `/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::scrape::ServerSide>,
    /// The event store's archive (with `--eventstore`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::eventstore::ArchiveReport>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the load started.
    pub second: f64,
    /// Requests answered in that second.
    pub requests: u64,
    /// Errors in that second.
    pub errors: u64,
    /// Publish latency P50, P95, P99 in ms.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Report {
    /// Prints a human summary.
    pub fn print(&self) {
        println!("mode               {}", self.mode);
        if let Some(chaos) = &self.chaos {
            println!(
                "chaos              {} faults, {} SIGTERMs without exit 0",
                chaos.faults.len(),
                chaos.unclean_exits
            );
        }
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
        if let Some(server) = &self.server {
            let show = |p95: Option<f64>, bucket: Option<(f64, f64)>| match (p95, bucket) {
                (Some(p95), Some((a, b))) => format!("{p95:.2} (bucket {a}..{b})"),
                _ => "—".to_string(),
            };
            println!(
                "server side (ms)   publish p95 {}  end-to-end p95 {}  (evrouter's /metrics, whole run)",
                show(server.publish_p95_ms, server.publish_bucket_ms),
                show(server.end_to_end_p95_ms, server.end_to_end_bucket_ms)
            );
            if let Some(archive) = &self.archive {
                println!(
                    "event store        {} of {} stored events archived, caught up {} after the load; PostgreSQL CPU {:.2} s",
                    archive.archived,
                    archive.published,
                    archive
                        .caught_up_after_s
                        .map_or("not".to_string(), |s| format!("{s:.1} s")),
                    archive.postgres_cpu_s
                );
            }
            if server.spans_exported + server.spans_dropped > 0 {
                println!(
                    "spans              {} exported, {} dropped (OTLP)",
                    server.spans_exported, server.spans_dropped
                );
            }
        }
        if let Some(read) = self.raw_read_events_per_sec {
            println!("read and acked     {read:.0} events/s (XREADGROUP + XACK, at the same time)");
        }
        if let Some(cpu) = &self.cpu_seconds {
            println!(
                "cpu seconds        evrouter {:.2}, redis {:.2}; evrouter peak RSS {:.0} MiB",
                cpu.evrouter, cpu.redis, cpu.evrouter_peak_rss_mib
            );
        }
        if let Some(e2e) = &self.end_to_end {
            println!(
                "delivered          {:.0} events/s ({} mode); published {}, delivered {}, lost {}, duplicates {}, order violations {}, unexpected {}",
                e2e.delivered_events_per_sec,
                e2e.subscription_mode,
                e2e.published,
                e2e.delivered_unique,
                e2e.lost,
                e2e.duplicates,
                e2e.order_violations,
                e2e.unexpected
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
