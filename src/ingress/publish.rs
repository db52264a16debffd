//! `POST /v1/publish/{topic}`: one event or a batch, answered after Redis confirms.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;
use crate::auth::Principal;
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;
use crate::publish::PublishContext;

/// Publishes the body to the topic.
pub async fn publish(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    match store(&app, &principal, topic, &headers, body).await {
        Ok((topic, outcome)) => {
            app.metrics
                .published("native", &topic, started, outcome.events());
            Ok((StatusCode::OK, Json(outcome)).into_response())
        }
        Err(err) => {
            app.metrics.rejected("native", err.code.as_str());
            Err(err)
        }
    }
}

/// Checks and stores a publish request: its topic and what was stored.
async fn store(
    app: &AppState,
    principal: &Principal,
    topic: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, crate::publish::PublishOutcome), ApiError> {
    let Path(topic) = topic.map_err(|e| ApiError::new(ErrorCode::InvalidTopic, e.body_text()))?;
    principal.may_publish(&topic)?;
    check_content_type(headers)?;
    let bytes = read_body(headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let context = PublishContext {
        traceparent: header_str(headers, "traceparent"),
        tracestate: header_str(headers, "tracestate"),
        quota: principal
            .quota
            .limits()
            .then(|| (principal.name.clone(), principal.quota.clone())),
    };
    let outcome = app.publisher.publish(&topic, &bytes, &context).await?;
    Ok((topic, outcome))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Accepts `application/json`, any `+json` type, or no content type at all.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("content-type `{essence}` is not JSON; send application/json"),
        ))
    }
}

/// Reads the body, refusing it from Content-Length before reading when it is too large,
/// cutting a chunked body off as soon as it passes the limit, and giving up (408) on a
/// body that trickles in slower than `timeout`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BodyTimeout,
                format!("the request body did not arrive within {timeout:?}"),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => Err(ApiError::new(
            ErrorCode::BodyReadFailed,
            format!("could not read the request body: {err}"),
        )),
    }
}
