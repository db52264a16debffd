//! `GET /metrics`: everything the instance measures, in the Prometheus text format, or in
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`).
//! Encoded by `prometheus-client` from a snapshot taken per scrape: histograms merged from
//! the threads' own (see `metrics::histogram`), counters and gauges read from their
//! atomics, and what comes from Redis (lag) read by the delivery runtime.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::codes::ErrorCode;
use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::metrics::{Series, Unit};

/// Upper bounds of the latency buckets, in seconds: 0.1 ms to 10 s.
const SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the size buckets.
const COUNTS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// One histogram's samples: labels, sum, count, and per-bucket counts with their upper
/// bounds (the last `+Inf`).
type HistogramSample = (Labels, f64, u64, Vec<(f64, u64)>);

/// One family of samples.
#[derive(Debug)]
enum Family {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, i64)>),
    FloatGauge(Vec<(Labels, f64)>),
    Histogram(Vec<HistogramSample>),
}

/// What one scrape shows.
#[derive(Debug, Default)]
struct Scrape {
    families: Vec<(&'static str, &'static str, Family)>,
}

impl Scrape {
    fn add(&mut self, name: &'static str, help: &'static str, family: Family) {
        self.families.push((name, help, family));
    }

    fn add_float(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        self.families
            .push((name, help, Family::FloatGauge(samples)));
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
        // A sample without labels is written without braces.
        fn with<'a>(
            metric: &'a mut MetricEncoder<'_>,
            labels: &'a Labels,
            write: impl FnOnce(&mut MetricEncoder<'_>) -> Result<(), std::fmt::Error>,
        ) -> Result<(), std::fmt::Error> {
            if labels.is_empty() {
                write(metric)
            } else {
                write(&mut metric.encode_family(labels)?)
            }
        }
        for (name, help, family) in &self.families {
            let kind = match family {
                Family::Counter(_) => MetricType::Counter,
                Family::Gauge(_) | Family::FloatGauge(_) => MetricType::Gauge,
                Family::Histogram(_) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            match family {
                Family::Counter(samples) => {
                    for (labels, value) in samples {
                        with(&mut metric, labels, |m| {
                            m.encode_counter::<NoLabelSet, _, u64>(value, None)
                        })?;
                    }
                }
                Family::Gauge(samples) => {
                    for (labels, value) in samples {
                        with(&mut metric, labels, |m| m.encode_gauge(value))?;
                    }
                }
                Family::FloatGauge(samples) => {
                    for (labels, value) in samples {
                        with(&mut metric, labels, |m| m.encode_gauge(value))?;
                    }
                }
                Family::Histogram(samples) => {
                    for (labels, sum, count, buckets) in samples {
                        with(&mut metric, labels, |m| {
                            m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
                        })?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), Cow::Owned(v.to_string())))
        .collect()
}

/// The histograms registered, grouped by name, with their buckets.
fn histograms(scrape: &mut Scrape, series: Vec<Series>) {
    let mut names: Vec<&'static str> = series.iter().map(|s| s.name).collect();
    names.dedup();
    names.sort();
    names.dedup();
    for name in names {
        let mut samples = Vec::new();
        let mut help = "";
        for s in series.iter().filter(|s| s.name == name) {
            help = s.help;
            let recorded = s.id.snapshot();
            let (bounds, scale) = match s.unit {
                Unit::Micros => (&SECONDS[..], 1_000_000.0),
                Unit::Count => (&COUNTS[..], 1.0),
            };
            let raw: Vec<u64> = bounds.iter().map(|b| (b * scale).round() as u64).collect();
            let cumulative = recorded.cumulative(&raw);
            let mut buckets = Vec::with_capacity(bounds.len() + 1);
            let mut below = 0;
            for (bound, cum) in bounds.iter().zip(cumulative) {
                buckets.push((*bound, cum.saturating_sub(below)));
                below = cum;
            }
            buckets.push((f64::MAX, recorded.count().saturating_sub(below)));
            let pairs: Vec<(&'static str, &str)> =
                s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            samples.push((
                labels(&pairs),
                recorded.sum as f64 / scale,
                recorded.count(),
                buckets,
            ));
        }
        scrape.add(name, help, Family::Histogram(samples));
    }
}

/// Prometheus metrics; for a principal with `metrics` or `admin`, or anyone when
/// `auth.open_metrics` is set.
pub async fn metrics(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::stats::may_read_metrics(&app, principal.as_ref(), "metrics need")?;
    let scrape = gather(&app).await;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "metrics could not be encoded"))?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", classic(&text))
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// OpenMetrics text as the classic Prometheus text format: no `# EOF` or `# UNIT` lines,
/// and counters named with their `_total` suffix in `# HELP` and `# TYPE`.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Takes the snapshot of one scrape.
async fn gather(app: &AppState) -> Scrape {
    let mut scrape = Scrape::default();
    let metrics = &app.metrics;
    let counter = |c: &crate::metrics::Counter| {
        Family::Counter(
            c.values()
                .into_iter()
                .map(|(values, n)| {
                    let pairs: Vec<(&'static str, &str)> = c
                        .labels
                        .iter()
                        .copied()
                        .zip(values.iter().map(String::as_str))
                        .collect();
                    (labels(&pairs), n)
                })
                .collect(),
        )
    };
    let publish = &metrics.publish;
    scrape.add(
        publish.published.name,
        publish.published.help,
        counter(&publish.published),
    );
    scrape.add(
        publish.rejected.name,
        publish.rejected.help,
        counter(&publish.rejected),
    );
    scrape.add(
        metrics.refused.name,
        metrics.refused.help,
        counter(&metrics.refused),
    );

    let subscriptions = app.delivery.stats();
    let observed = app.delivery.observed();
    use std::sync::atomic::Ordering::Relaxed;
    type Read = fn(&crate::delivery::stats::SubscriptionStats) -> u64;
    let per_subscription: [(&'static str, &'static str, Read); 10] = [
        (
            "evrouter_delivered",
            "Events delivered (answered 2xx).",
            |s| s.delivered.load(Relaxed),
        ),
        (
            "evrouter_retried",
            "Attempts that failed and will be retried.",
            |s| s.retried.load(Relaxed),
        ),
        (
            "evrouter_dead_lettered",
            "Events moved to the dead-letter queue.",
            |s| s.dead_lettered.load(Relaxed),
        ),
        (
            "evrouter_dropped",
            "Events dropped (404 or DROP by rule, or exhausted without a DLQ).",
            |s| s.dropped.load(Relaxed),
        ),
        (
            "evrouter_expired",
            "Events past their time to live, acked undelivered.",
            |s| s.expired.load(Relaxed),
        ),
        (
            "evrouter_unrouted",
            "Events no routing rule of a Dapr subscription took.",
            |s| s.unrouted.load(Relaxed),
        ),
        (
            "evrouter_sequence_duplicates",
            "Sequence ordering: events whose number was already delivered or held.",
            |s| s.sequence.duplicates.load(Relaxed),
        ),
        (
            "evrouter_sequence_gaps_opened",
            "Sequence ordering: gaps opened (an event ahead of the next number).",
            |s| s.sequence.gaps_opened.load(Relaxed),
        ),
        (
            "evrouter_sequence_gaps_timed_out",
            "Sequence ordering: gaps closed by their timeout.",
            |s| s.sequence.gaps_timed_out.load(Relaxed),
        ),
        (
            "evrouter_sequence_late",
            "Sequence ordering: events that came after their gap was skipped.",
            |s| s.sequence.late_after_gap.load(Relaxed),
        ),
    ];
    for (name, help, read) in per_subscription {
        let samples = subscriptions
            .iter()
            .map(|(sub, stats)| (labels(&[("subscription", sub)]), read(stats)))
            .collect();
        scrape.add(name, help, Family::Counter(samples));
    }
    let gauge = |read: Read| -> Family {
        Family::Gauge(
            subscriptions
                .iter()
                .map(|(sub, stats)| (labels(&[("subscription", sub)]), read(stats) as i64))
                .collect(),
        )
    };
    scrape.add(
        "evrouter_in_flight_events",
        "Events read and not yet finished on this instance.",
        gauge(|s| s.in_flight.load(Relaxed)),
    );
    scrape.add(
        "evrouter_reorder_held_events",
        "Sequence ordering: events held waiting for a gap to fill.",
        gauge(|s| s.sequence.held.load(Relaxed)),
    );
    // Read from Redis every few seconds (`delivery::observed`), not per scrape.
    let from_redis = |read: fn(&crate::store::gauges::GroupState) -> Option<u64>| {
        Family::Gauge(
            observed
                .groups
                .iter()
                .filter_map(|(sub, state)| {
                    read(state).map(|v| (labels(&[("subscription", sub)]), v as i64))
                })
                .collect(),
        )
    };
    scrape.add(
        "evrouter_lag_events",
        "Entries the subscription's group has not read yet, over all partitions (from Redis).",
        from_redis(|g| g.lag),
    );
    scrape.add(
        "evrouter_pending_events",
        "Entries read by the subscription's group and not acked yet, over all partitions.",
        from_redis(|g| Some(g.pending)),
    );
    scrape.add(
        "evrouter_dead_letters",
        "Entries in the subscription's dead-letter streams.",
        from_redis(|g| Some(g.dead_letters)),
    );
    scrape.add_float(
        "evrouter_lag_seconds",
        "Age of the oldest entry the subscription has not acked (pending or unread); 0 when none.",
        observed
            .groups
            .keys()
            .filter_map(|sub| {
                observed
                    .lag_seconds(sub)
                    .map(|v| (labels(&[("subscription", sub)]), v))
            })
            .collect(),
    );
    let (used, max) = observed.memory.unwrap_or((0, 0));
    if observed.memory.is_some() {
        scrape.add(
            "evrouter_redis_memory_used_bytes",
            "Redis's used_memory.",
            Family::Gauge(vec![(Vec::new(), used as i64)]),
        );
        scrape.add(
            "evrouter_redis_memory_max_bytes",
            "Redis's maxmemory (0: unbounded).",
            Family::Gauge(vec![(Vec::new(), max as i64)]),
        );
    }
    scrape.add(
        "evrouter_redis_up",
        "Whether Redis answered the last check (every 5 s).",
        Family::Gauge(vec![(Vec::new(), i64::from(observed.redis_up))]),
    );
    let ready = observed.redis_up && app.health.down().is_empty();
    scrape.add(
        "evrouter_ready",
        "Whether this instance is ready: every watched part up and Redis answering.",
        Family::Gauge(vec![(Vec::new(), i64::from(ready))]),
    );
    scrape.add(
        "evrouter_owned_partitions",
        "Partitions this instance holds the lease of.",
        Family::Gauge(vec![(Vec::new(), app.delivery.owned_partitions() as i64)]),
    );
    scrape.add(
        "evrouter_breaker_open",
        "Whether the circuit breaker of an endpoint is open or probing (1) or closed (0).",
        Family::Gauge(
            app.delivery
                .breakers()
                .into_iter()
                .flat_map(|(sub, endpoints)| {
                    endpoints.into_iter().map(move |(url, open)| {
                        let endpoint = crate::metrics::endpoint_label(&url);
                        (
                            labels(&[("subscription", &sub), ("endpoint", &endpoint)]),
                            i64::from(open),
                        )
                    })
                })
                .collect(),
        ),
    );
    scrape.add(
        "evrouter_dapr_app_healthy",
        "Whether a Dapr app with health checks is healthy (1) or not (0); nothing is delivered to it while it is not.",
        Family::Gauge(
            app.app_health
                .states()
                .into_iter()
                .map(|(id, healthy)| (labels(&[("app", &id)]), i64::from(healthy)))
                .collect(),
        ),
    );
    scrape.add(
        "evrouter_parts_down",
        "Watched parts down now (a panic was caught and the part waits to restart).",
        Family::Gauge(vec![(Vec::new(), app.health.down().len() as i64)]),
    );
    scrape.add(
        "evrouter_panics",
        "Panics caught since start, by part.",
        Family::Counter(
            app.health
                .panics()
                .into_iter()
                .map(|(part, n)| (labels(&[("part", &part)]), n))
                .collect(),
        ),
    );
    scrape.add(
        "evrouter_uptime_seconds",
        "Seconds since this instance started.",
        Family::Gauge(vec![(Vec::new(), metrics.uptime().as_secs() as i64)]),
    );
    if let Some(spans) = app.publisher.tracer().stats() {
        scrape.add(
            "evrouter_spans_exported",
            "Spans the OTLP collector accepted.",
            Family::Counter(vec![(Vec::new(), spans.exported)]),
        );
        scrape.add(
            "evrouter_spans_dropped",
            "Spans dropped: the export queue was full (a slow collector), or an export failed.",
            Family::Counter(vec![
                (labels(&[("reason", "queue_full")]), spans.dropped_full),
                (labels(&[("reason", "export_failed")]), spans.dropped_failed),
            ]),
        );
    }
    histograms(&mut scrape, metrics.series());
    scrape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_with_total_and_drops_eof() {
        let open = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total{x=\"1\"} 3\n# HELP b_seconds B.\n# TYPE b_seconds histogram\nb_seconds_sum 1.0\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total{x=\"1\"} 3\n# HELP b_seconds B.\n# TYPE b_seconds histogram\nb_seconds_sum 1.0\n"
        );
    }
}
