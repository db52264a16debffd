//! `GET /v1/stats`: per-subscription delivery counters, lag and latency percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::auth::{Denied, Principal};

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
    Ok(Json(json!({ "subscriptions": subscriptions })))
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
