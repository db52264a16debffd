//! `GET /v1/stats`: per-subscription delivery counters, lag and latency percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::auth::{Denied, Principal};
use crate::metrics::{catalogue, Metrics, Recorded, Unit};

/// Counters of every subscription running on this instance; for a principal with
/// `metrics` or `admin`, or anyone when `auth.open_metrics` is set.
pub async fn stats(
    State(app): State<Arc<AppState>>,
    principal: Option<Extension<Arc<Principal>>>,
) -> Result<Json<Value>, ApiError> {
    may_read_metrics(&app, principal.as_ref(), "stats need")?;
    let mut subscriptions = BTreeMap::new();
    for (name, stats) in app.delivery.stats() {
        let lag = app.delivery.lag(&name).await;
        let sequence = app.delivery.orders_by_sequence(&name);
        subscriptions.insert(name, stats.snapshot(lag, sequence, &app.metrics));
    }
    Ok(Json(json!({
        "subscriptions": subscriptions,
        "histograms": histograms(&app.metrics),
    })))
}

/// Every other built-in histogram (publish time, webhook requests, Redis round trips and
/// sizes), by name and labels: percentiles since start and over about the last minute.
/// Latencies in ms, sizes in entries.
fn histograms(metrics: &Metrics) -> Vec<Value> {
    metrics
        .series()
        .into_iter()
        .filter(|s| *s.metric != catalogue::DELIVERY_LATENCY_SECONDS)
        .map(|s| {
            let scale = match s.unit() {
                Unit::Micros => 1000.0,
                Unit::Count => 1.0,
            };
            let show = |r: &Recorded| {
                let v = |x: u64| x as f64 / scale;
                json!({
                    "count": r.count(),
                    "p50": v(r.quantile(0.50)),
                    "p95": v(r.quantile(0.95)),
                    "p99": v(r.quantile(0.99)),
                    "p999": v(r.quantile(0.999)),
                    "max": v(r.max()),
                })
            };
            let labels: serde_json::Map<String, Value> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                .collect();
            json!({
                "name": s.metric.name,
                "unit": match s.unit() { Unit::Micros => "ms", Unit::Count => "entries" },
                "labels": labels,
                "since_start": show(&s.id.snapshot()),
                "last_minute": show(&metrics.last_minute(s.id)),
            })
        })
        .collect()
}

/// What `/v1/stats`, `/metrics` and the dashboard's data need: a principal with `metrics`
/// (or `admin`), or `auth.open_metrics`. `what` starts the refusal's message.
pub fn may_read_metrics(
    app: &AppState,
    principal: Option<&Extension<Arc<Principal>>>,
    what: &str,
) -> Result<(), ApiError> {
    if app.auth.open_metrics() || principal.is_some_and(|Extension(p)| p.metrics) {
        return Ok(());
    }
    Err(ApiError::forbidden(Denied(format!(
        "{what} a principal with `metrics` or `admin`"
    ))))
}
