//! `GET /v1/stats`: per-subscription delivery counters, lag and latency percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// Counters of every subscription running on this instance.
pub async fn stats(State(app): State<Arc<AppState>>) -> Json<Value> {
    let mut subscriptions = BTreeMap::new();
    for (name, stats) in app.delivery.stats() {
        let lag = app.delivery.lag(&name).await;
        let sequence = app.delivery.orders_by_sequence(&name);
        subscriptions.insert(name, stats.snapshot(lag, sequence));
    }
    Json(json!({ "subscriptions": subscriptions }))
}
