//! The live dashboard: `GET /ui` serves one HTML page (built into the binary with its
//! script and style sheet, see [`assets`]) that polls `GET /v1/dashboard` every second and draws what it gets: publish and
//! delivery rates and latency percentiles over the last minutes, and per subscription its
//! lag, in-flight events, retries, dead letters and breakers; the instances of the
//! cluster and the partitions each holds, read from Redis; and Redis's memory. The
//! timeline is sampled by one task every [`STEP`] from the built-in histograms.

pub mod assets;

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::metrics::{catalogue, Metric, Metrics, Recorded};
use crate::model::clock::now_ms;
use crate::model::sync::lock;

/// Time between two points of the timeline.
pub const STEP: Duration = Duration::from_secs(2);

/// Points kept: ten minutes.
const POINTS: usize = 300;

/// One point of the timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Events stored per second since the previous point.
    pub published_per_s: f64,
    /// Events delivered per second since the previous point.
    pub delivered_per_s: f64,
    /// Publish latency P50, P95, P99 over the step, ms.
    pub publish_ms: [f64; 3],
    /// End-to-end latency P50, P95, P99 over the step, ms.
    pub end_to_end_ms: [f64; 3],
}

/// The timeline: points, and the totals of the last sample.
#[derive(Debug, Default)]
pub struct Timeline {
    points: Mutex<VecDeque<Point>>,
    last: Mutex<Option<Totals>>,
}

#[derive(Debug, Clone)]
struct Totals {
    at_ms: u64,
    published: u64,
    delivered: u64,
    publish: Recorded,
    end_to_end: Recorded,
}

fn merged(metrics: &Metrics, metric: &Metric) -> Recorded {
    let mut all = Recorded::new();
    for series in metrics.series().iter().filter(|s| s.metric == metric) {
        all.add(&series.id.snapshot());
    }
    all
}

fn percentiles(recorded: &Recorded) -> [f64; 3] {
    [0.50, 0.95, 0.99].map(|q| recorded.quantile(q) as f64 / 1000.0)
}

impl Timeline {
    /// Takes one sample and adds a point for the time since the previous one.
    pub fn sample(&self, app: &AppState) {
        let totals = Totals {
            at_ms: now_ms(),
            published: app
                .metrics
                .publish
                .published
                .values()
                .iter()
                .map(|(_, n)| n)
                .sum(),
            delivered: app
                .delivery
                .stats()
                .iter()
                .map(|(_, s)| s.delivered.load(Relaxed))
                .sum(),
            publish: merged(&app.metrics, &catalogue::PUBLISH_DURATION_SECONDS),
            end_to_end: merged(&app.metrics, &catalogue::DELIVERY_LATENCY_SECONDS),
        };
        let previous = lock(&self.last).replace(totals.clone());
        let Some(previous) = previous else {
            return;
        };
        let seconds = (totals.at_ms.saturating_sub(previous.at_ms) as f64 / 1000.0).max(0.001);
        let point = Point {
            at_ms: totals.at_ms,
            published_per_s: totals.published.saturating_sub(previous.published) as f64 / seconds,
            delivered_per_s: totals.delivered.saturating_sub(previous.delivered) as f64 / seconds,
            publish_ms: percentiles(&totals.publish.since(&previous.publish)),
            end_to_end_ms: percentiles(&totals.end_to_end.since(&previous.end_to_end)),
        };
        let mut points = lock(&self.points);
        points.push_back(point);
        while points.len() > POINTS {
            points.pop_front();
        }
    }

    /// Every point kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        lock(&self.points).iter().copied().collect()
    }
}

/// Samples the timeline every [`STEP`] until aborted.
pub fn spawn_sampler(app: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STEP);
        loop {
            tick.tick().await;
            app.timeline.sample(&app);
        }
    })
}

/// `GET /v1/dashboard`: what the page draws; for a principal with `metrics` or `admin`,
/// or anyone when `auth.open_metrics` is set.
pub async fn data(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
) -> Result<Json<Value>, ApiError> {
    crate::ingress::stats::may_read_metrics(&app, principal.as_ref(), "the dashboard needs")?;
    let observed = app.delivery.observed();
    let breakers = app.delivery.breakers();
    let subscriptions: Vec<Value> = app
        .delivery
        .stats()
        .iter()
        .map(|(name, stats)| {
            let state = observed.groups.get(name);
            let open: Vec<Value> = breakers
                .iter()
                .find(|(sub, _)| sub == name)
                .map(|(_, endpoints)| {
                    endpoints
                        .iter()
                        .map(|(url, open)| {
                            json!({"endpoint": crate::metrics::endpoint_label(url), "open": open})
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "name": name,
                "delivered": stats.delivered.load(Relaxed),
                "retried": stats.retried.load(Relaxed),
                "dead_lettered": stats.dead_lettered.load(Relaxed),
                "in_flight": stats.in_flight.load(Relaxed),
                "lag_events": state.and_then(|s| s.lag),
                "lag_seconds": observed.lag_seconds(name),
                "dead_letters": state.map(|s| s.dead_letters),
                "breakers": open,
            })
        })
        .collect();
    let instances: Vec<Value> = observed
        .holders
        .iter()
        .map(|(instance, partitions)| json!({"instance": instance, "partitions": partitions}))
        .collect();
    Ok(Json(json!({
        "instance": app.delivery.instance(),
        "at_ms": now_ms(),
        "step_ms": STEP.as_millis() as u64,
        "timeline": app.timeline.points(),
        "subscriptions": subscriptions,
        "instances": instances,
        "owned_partitions": app.delivery.owned_partitions(),
        "redis": {
            "up": observed.redis_up,
            "used_bytes": observed.memory.map(|m| m.0),
            "max_bytes": observed.memory.map(|m| m.1),
        },
    })))
}
