//! `GET /v1/dlq/{subscription}`, `POST /v1/dlq/{subscription}/replay`,
//! `DELETE /v1/dlq/{subscription}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::publish::read_body;
use super::AppState;
use crate::auth::Principal;
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;

/// Paging of `GET /v1/dlq/{subscription}`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Most entries (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Cursor from a previous page's `next`.
    pub after: Option<String>,
}

/// Body of a redrive: the cursors to send again, or nothing for all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    /// Cursors (`id` of listed entries).
    pub ids: Option<Vec<String>>,
}

fn store_error(err: redis::RedisError) -> ApiError {
    ApiError::store_unavailable("dead-letter operation", err)
}

/// Lists dead letters, paged.
pub async fn list(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    super::subscriptions::check_owner(&app, &principal, &name)?;
    let page = app
        .delivery
        .dlq_list(&name, limit, query.after.as_deref())
        .await
        .ok_or_else(|| ApiError::unknown_subscription(&name))?
        .map_err(store_error)?;
    Ok(Json(page).into_response())
}

/// Redrives dead letters through the subscription's endpoints.
pub async fn redrive(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::subscriptions::check_owner(&app, &principal, &name)?;
    let bytes = read_body(&headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let request: RedriveBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RedriveBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("replay body: {e}")))?
    };
    let report = app
        .delivery
        .dlq_redrive(&name, request.ids.as_deref())
        .await
        .ok_or_else(|| ApiError::unknown_subscription(&name))?
        .map_err(store_error)?;
    Ok(Json(report).into_response())
}

/// Purges dead letters.
pub async fn purge(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    principal.must_be_admin("purging a DLQ")?;
    let purged = app
        .delivery
        .dlq_purge(&name)
        .await
        .ok_or_else(|| ApiError::unknown_subscription(&name))?
        .map_err(store_error)?;
    Ok(Json(json!({ "purged": purged })).into_response())
}
