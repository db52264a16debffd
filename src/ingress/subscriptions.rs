//! `GET|POST /v1/subscriptions`, `GET|PUT|DELETE /v1/subscriptions/{name}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::publish::read_body;
use super::AppState;
use crate::delivery::registry::Created;
use crate::delivery::subscription::Subscription;
use crate::ingress::error::ApiError;
use crate::model::subscription::SubscriptionSpec;
use crate::publish::EventViolation;

fn store_error(err: redis::RedisError) -> ApiError {
    ApiError::store_unavailable("subscription store", err)
}

/// Parses and validates a subscription body, listing every problem with its path.
fn parse(bytes: &[u8], name_from_path: Option<&str>) -> Result<Subscription, ApiError> {
    let invalid = |details: Vec<EventViolation>| ApiError {
        details,
        ..ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_subscription",
            "the subscription is not valid",
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut spec: SubscriptionSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let pointer = if path == "." {
            String::new()
        } else {
            format!("/{}", path.replace(['.', '['], "/").replace(']', ""))
        };
        invalid(vec![EventViolation {
            index: None,
            path: pointer,
            message: e.inner().to_string(),
        }])
    })?;
    if let Some(name) = name_from_path {
        if spec.name.is_empty() {
            spec.name = name.to_string();
        } else if spec.name != name {
            return Err(invalid(vec![EventViolation {
                index: None,
                path: "/name".into(),
                message: format!("must match the name in the path, `{name}`"),
            }]));
        }
    }
    Subscription::new(spec).map_err(|violations| {
        invalid(
            violations
                .into_iter()
                .map(|v| EventViolation {
                    index: None,
                    path: v.path,
                    message: v.message,
                })
                .collect(),
        )
    })
}

/// `GET /v1/subscriptions`.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Vec<SubscriptionSpec>> {
    Json(
        app.delivery
            .registry()
            .all()
            .iter()
            .map(|s| s.spec.clone())
            .collect(),
    )
}

/// `GET /v1/subscriptions/{name}`.
pub async fn get(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<SubscriptionSpec>, ApiError> {
    app.delivery
        .registry()
        .get(&name)
        .map(|s| Json(s.spec.clone()))
        .ok_or_else(|| ApiError::unknown_subscription(&name))
}

/// `POST /v1/subscriptions`: 201 created, 200 when the same one exists, 409 when a
/// different one of that name exists.
pub async fn create(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let sub = parse(&bytes, None)?;
    match app.delivery.create(&sub).await.map_err(store_error)? {
        Created::New => Ok((StatusCode::CREATED, Json(sub.spec)).into_response()),
        Created::Unchanged => Ok((StatusCode::OK, Json(sub.spec)).into_response()),
        Created::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "subscription_exists",
            format!(
                "a different subscription named `{}` exists; PUT /v1/subscriptions/{} replaces it",
                sub.name(),
                sub.name()
            ),
        )),
    }
}

/// `PUT /v1/subscriptions/{name}`: creates or replaces.
pub async fn put(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let sub = parse(&bytes, Some(&name))?;
    let existed = app.delivery.put(&sub).await.map_err(store_error)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(sub.spec)).into_response())
}

/// `DELETE /v1/subscriptions/{name}`.
pub async fn delete(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.delivery.delete(&name).await.map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unknown_subscription(&name))
    }
}
