//! Replays from the event store over HTTP: `POST /v1/replay` starts one,
//! `GET /v1/replays/{id}` reports it, `DELETE /v1/replays/{id}` cancels it,
//! `POST /v1/replays/{id}/resume` goes on from its last page. A replay into a subscription
//! needs its owner or an admin; republishing to a topic needs an admin.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::publish::read_body;
use super::AppState;
use crate::auth::Principal;
use crate::eventstore::replay::{ReplayError, ReplaySpec, ReplayStatus, Replays, Target};
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;

fn replays_of(app: &AppState) -> Result<&Arc<Replays>, ApiError> {
    app.replays
        .as_ref()
        .ok_or_else(super::events::event_store_off)
}

fn api_error(err: ReplayError) -> ApiError {
    match err {
        ReplayError::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
        ReplayError::UnknownSubscription(name) => ApiError::unknown_subscription(&name),
        ReplayError::Unknown(id) => {
            ApiError::new(ErrorCode::UnknownReplay, format!("no replay `{id}`"))
        }
        ReplayError::Running(id) => ApiError::new(
            ErrorCode::ReplayRunning,
            format!("replay `{id}` is running or done"),
        ),
        ReplayError::Store(err) => super::events::unavailable(err),
        ReplayError::Redis(err) => ApiError::store_unavailable("replay state", err),
    }
}

fn may_run(app: &AppState, principal: &Principal, target: &Target) -> Result<(), ApiError> {
    match target {
        Target::Subscription(name) => super::subscriptions::check_owner(app, principal, name),
        Target::Topic(_) => Ok(principal.must_be_admin("republishing archived events")?),
    }
}

/// Who may see or steer a job: whoever may start it.
async fn owned(
    app: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(Arc<Replays>, ReplayStatus), ApiError> {
    let replays = replays_of(app)?.clone();
    let status = replays.status(id).await.map_err(api_error)?;
    may_run(app, principal, &status.spec.target)?;
    Ok((replays, status))
}

/// Starts a replay: 202 with its first status.
pub async fn start(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let replays = replays_of(&app)?.clone();
    let bytes = read_body(&headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let spec: ReplaySpec = ApiError::json_body(
        &bytes,
        ErrorCode::InvalidRequest,
        "the replay body is not valid",
    )?;
    may_run(&app, &principal, &spec.target)?;
    let status = replays
        .start(spec, &principal.name)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// A replay's progress.
pub async fn status(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, status) = owned(&app, &principal, &id).await?;
    Ok(Json(status).into_response())
}

/// Asks a replay to stop after its current page.
pub async fn cancel(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (replays, _) = owned(&app, &principal, &id).await?;
    let status = replays.cancel(&id).await.map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// Goes on with a stopped replay from its last page.
pub async fn resume(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (replays, _) = owned(&app, &principal, &id).await?;
    let status = replays.resume(&id).await.map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}
