//! `GET /metrics`: everything the instance measures, in the Prometheus text format, or in
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`).
//! Both are encoded (see [`exposition`]) from a snapshot taken per scrape, every family
//! named by the metrics catalogue: histograms merged from the threads' own (see
//! `metrics::histogram`), counters and gauges read from their atomics, and what comes
//! from Redis (lag) read by the delivery runtime.

mod exposition;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::codes::ErrorCode;
use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::metrics::{catalogue, Metric, Series, Unit};
use exposition::{labels, Family, Scrape};

/// Upper bounds of the latency buckets, in seconds: 0.1 ms to 10 s.
const SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the size buckets.
const COUNTS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// The histograms registered, grouped by metric, with their buckets.
fn histograms(scrape: &mut Scrape, series: Vec<Series>) {
    let mut metrics: Vec<&'static Metric> = series.iter().map(|s| s.metric).collect();
    metrics.sort_by_key(|m| m.name);
    metrics.dedup();
    for metric in metrics {
        let mut samples = Vec::new();
        for s in series.iter().filter(|s| s.metric == metric) {
            let recorded = s.id.snapshot();
            let (bounds, scale) = match s.unit() {
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
            let values: Vec<&str> = s.labels.iter().map(|(_, v)| v.as_str()).collect();
            samples.push((
                labels(metric, &values),
                recorded.sum as f64 / scale,
                recorded.count(),
                buckets,
            ));
        }
        scrape.add(metric, Family::Histogram(samples));
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
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        let text = scrape
            .openmetrics()
            .map_err(|_| ApiError::new(ErrorCode::Internal, "metrics could not be encoded"))?;
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", scrape.classic())
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The samples of a labelled counter.
fn counter(c: &crate::metrics::Counter) -> Family {
    Family::Counter(
        c.values()
            .into_iter()
            .map(|(values, n)| {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                (labels(c.metric, &values), n)
            })
            .collect(),
    )
}

/// A family of one sample without labels.
fn single(value: i64) -> Family {
    Family::Gauge(vec![(Vec::new(), value)])
}

/// Takes the snapshot of one scrape.
async fn gather(app: &AppState) -> Scrape {
    use crate::delivery::stats::SubscriptionStats;
    use catalogue as c;
    use std::sync::atomic::Ordering::Relaxed;

    let mut scrape = Scrape::default();
    let metrics = &app.metrics;
    for counted in [
        &metrics.publish.published,
        &metrics.publish.rejected,
        &metrics.refused,
    ] {
        scrape.add(counted.metric, counter(counted));
    }

    let subscriptions = app.delivery.stats();
    let observed = app.delivery.observed();
    type Read = fn(&SubscriptionStats) -> u64;
    let per_subscription: [(&'static Metric, Read); 10] = [
        (&c::DELIVERED, |s| s.delivered.load(Relaxed)),
        (&c::RETRIED, |s| s.retried.load(Relaxed)),
        (&c::DEAD_LETTERED, |s| s.dead_lettered.load(Relaxed)),
        (&c::DROPPED, |s| s.dropped.load(Relaxed)),
        (&c::EXPIRED, |s| s.expired.load(Relaxed)),
        (&c::UNROUTED, |s| s.unrouted.load(Relaxed)),
        (&c::SEQUENCE_DUPLICATES, |s| {
            s.sequence.duplicates.load(Relaxed)
        }),
        (&c::SEQUENCE_GAPS_OPENED, |s| {
            s.sequence.gaps_opened.load(Relaxed)
        }),
        (&c::SEQUENCE_GAPS_TIMED_OUT, |s| {
            s.sequence.gaps_timed_out.load(Relaxed)
        }),
        (&c::SEQUENCE_LATE, |s| {
            s.sequence.late_after_gap.load(Relaxed)
        }),
    ];
    for (metric, read) in per_subscription {
        let samples = subscriptions
            .iter()
            .map(|(sub, stats)| (labels(metric, &[sub]), read(stats)))
            .collect();
        scrape.add(metric, Family::Counter(samples));
    }
    let per_subscription: [(&'static Metric, Read); 2] = [
        (&c::IN_FLIGHT_EVENTS, |s| s.in_flight.load(Relaxed)),
        (&c::REORDER_HELD_EVENTS, |s| s.sequence.held.load(Relaxed)),
    ];
    for (metric, read) in per_subscription {
        let samples = subscriptions
            .iter()
            .map(|(sub, stats)| (labels(metric, &[sub]), read(stats) as i64))
            .collect();
        scrape.add(metric, Family::Gauge(samples));
    }
    // Read from Redis every few seconds (`delivery::observed`), not per scrape.
    type FromRedis = fn(&crate::store::gauges::GroupState) -> Option<u64>;
    let from_redis: [(&'static Metric, FromRedis); 3] = [
        (&c::LAG_EVENTS, |g| g.lag),
        (&c::PENDING_EVENTS, |g| Some(g.pending)),
        (&c::DEAD_LETTERS, |g| Some(g.dead_letters)),
    ];
    for (metric, read) in from_redis {
        let samples = observed
            .groups
            .iter()
            .filter_map(|(sub, state)| read(state).map(|v| (labels(metric, &[sub]), v as i64)))
            .collect();
        scrape.add(metric, Family::Gauge(samples));
    }
    scrape.add(
        &c::LAG_SECONDS,
        Family::FloatGauge(
            observed
                .groups
                .keys()
                .filter_map(|sub| {
                    observed
                        .lag_seconds(sub)
                        .map(|v| (labels(&c::LAG_SECONDS, &[sub]), v))
                })
                .collect(),
        ),
    );
    if let Some((used, max)) = observed.memory {
        scrape.add(&c::REDIS_MEMORY_USED_BYTES, single(used as i64));
        scrape.add(&c::REDIS_MEMORY_MAX_BYTES, single(max as i64));
    }
    scrape.add(&c::REDIS_UP, single(i64::from(observed.redis_up)));
    let ready = observed.redis_up && app.health.down().is_empty();
    scrape.add(&c::READY, single(i64::from(ready)));
    scrape.add(
        &c::OWNED_PARTITIONS,
        single(app.delivery.owned_partitions() as i64),
    );
    scrape.add(
        &c::BREAKER_OPEN,
        Family::Gauge(
            app.delivery
                .breakers()
                .into_iter()
                .flat_map(|(sub, endpoints)| {
                    endpoints.into_iter().map(move |(url, open)| {
                        let endpoint = crate::metrics::endpoint_label(&url);
                        (
                            labels(&c::BREAKER_OPEN, &[&sub, &endpoint]),
                            i64::from(open),
                        )
                    })
                })
                .collect(),
        ),
    );
    scrape.add(
        &c::DAPR_APP_HEALTHY,
        Family::Gauge(
            app.app_health
                .states()
                .into_iter()
                .map(|(id, healthy)| (labels(&c::DAPR_APP_HEALTHY, &[&id]), i64::from(healthy)))
                .collect(),
        ),
    );
    scrape.add(&c::PARTS_DOWN, single(app.health.down().len() as i64));
    scrape.add(
        &c::PANICS,
        Family::Counter(
            app.health
                .panics()
                .into_iter()
                .map(|(part, n)| (labels(&c::PANICS, &[&part]), n))
                .collect(),
        ),
    );
    scrape.add(
        &c::UPTIME_SECONDS,
        single(metrics.uptime().as_secs() as i64),
    );
    if let Some(spans) = app.publisher.tracer().stats() {
        scrape.add(
            &c::SPANS_EXPORTED,
            Family::Counter(vec![(Vec::new(), spans.exported)]),
        );
        scrape.add(
            &c::SPANS_DROPPED,
            Family::Counter(vec![
                (
                    labels(&c::SPANS_DROPPED, &["queue_full"]),
                    spans.dropped_full,
                ),
                (
                    labels(&c::SPANS_DROPPED, &["export_failed"]),
                    spans.dropped_failed,
                ),
            ]),
        );
    }
    histograms(&mut scrape, metrics.series());
    scrape
}
