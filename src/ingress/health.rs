//! Liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: every watched part runs, and Redis answers a PING.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let down = app.health.down();
    if !down.is_empty() {
        let named: Vec<String> = down
            .iter()
            .map(|(part, why)| format!("{part} ({why})"))
            .collect();
        return Err(ApiError::new(
            ErrorCode::PartDown,
            format!("not ready: {}", named.join(", ")),
        ));
    }
    let mut conn = app.control.clone();
    let ping = crate::store::ping(&mut conn);
    match tokio::time::timeout(app.ready_timeout, ping).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready", "redis": "ok"}))),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "readiness PING failed");
            Err(ApiError::new(
                ErrorCode::StoreUnavailable,
                "redis is unreachable",
            ))
        }
        Err(_) => Err(ApiError::new(
            ErrorCode::StoreUnavailable,
            "redis did not answer PING in time",
        )),
    }
}
