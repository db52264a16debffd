//! The event store's queries over HTTP: `GET /v1/events` (filtered, paged),
//! `GET /v1/events/{event_id}`, `GET /v1/traces/{correlation_id}`. A caller sees the events
//! of the topics it may subscribe to.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::auth::Principal;
use crate::eventstore::query::{Cursor, EventFilter, TracedEvent};
use crate::eventstore::EventStore;
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;

/// The filters of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    correlation_id: Option<String>,
    key: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    topic: Option<String>,
    service: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    /// `newest` (default) or `oldest` first.
    order: Option<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// `404 event_store_off`: no `[eventstore] url`.
pub(super) fn event_store_off() -> ApiError {
    ApiError::new(
        ErrorCode::EventStoreOff,
        "no event store is configured ([eventstore] url)",
    )
}

/// `503 event_store_unavailable` (logged, the cause kept out of the answer).
pub(super) fn unavailable(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "event store call failed");
    let mut error = ApiError::new(
        ErrorCode::EventStoreUnavailable,
        "the event store (PostgreSQL) did not answer",
    );
    error.retry_after = Some(1);
    error
}

/// The event store, or `404 event_store_off`.
pub(super) fn store_of(app: &AppState) -> Result<Arc<EventStore>, ApiError> {
    app.eventstore.clone().ok_or_else(event_store_off)
}

fn time(name: &str, value: Option<&String>) -> Result<Option<SystemTime>, ApiError> {
    value
        .map(|v| {
            humantime::parse_rfc3339_weak(v)
                .map_err(|e| bad(format!("`{name}` is not an RFC 3339 time ({e}): `{v}`")))
        })
        .transpose()
}

/// Lists archived events.
pub async fn list(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| bad(e.body_text()))?;
    let store = store_of(&app)?;
    let newest_first = match query.order.as_deref() {
        None | Some("newest") => true,
        Some("oldest") => false,
        Some(other) => {
            return Err(bad(format!(
                "`order` is `newest` or `oldest`, not `{other}`"
            )))
        }
    };
    let after = query
        .after
        .as_deref()
        .map(|a| Cursor::parse(a).ok_or_else(|| bad(format!("`after` is not a cursor: `{a}`"))))
        .transpose()?;
    let filter = EventFilter {
        from: time("from", query.from.as_ref())?,
        to: time("to", query.to.as_ref())?,
        correlation_id: query.correlation_id,
        key: query.key,
        event_type: query.event_type,
        topic: query.topic,
        service: query.service,
        limit: query.limit.unwrap_or(100),
        after,
        newest_first,
        readable: principal.readable_topics(),
    };
    let page = store
        .events(&filter, |topic| principal.may_subscribe(topic).is_ok())
        .await
        .map_err(unavailable)?;
    Ok(Json(page).into_response())
}

/// One event, with its outcomes.
pub async fn one(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(event_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = store_of(&app)?;
    let mut found = store.event(&event_id).await.map_err(unavailable)?;
    found.retain(|e| principal.may_subscribe(&e.event.topic).is_ok());
    own_outcomes(&app, &principal, &mut found);
    match found.into_iter().next() {
        Some(event) => Ok(Json(event).into_response()),
        None => Err(ApiError::new(
            ErrorCode::UnknownEvent,
            format!("no archived event `{event_id}` this caller may see"),
        )),
    }
}

/// Every event of a business flow in stored order, with each subscription's outcomes.
pub async fn trace(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(correlation_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = store_of(&app)?;
    let mut events = store.trace(&correlation_id).await.map_err(unavailable)?;
    events.retain(|e| principal.may_subscribe(&e.event.topic).is_ok());
    own_outcomes(&app, &principal, &mut events);
    Ok(Json(json!({ "correlation_id": correlation_id, "events": events })).into_response())
}

/// Keeps, of each event's outcomes, those of subscriptions the caller may manage: another
/// owner's subscription names, answers and errors are its own business.
fn own_outcomes(app: &AppState, principal: &Principal, events: &mut [TracedEvent]) {
    if principal.admin {
        return;
    }
    let registry = app.delivery.registry();
    for event in events {
        event.outcomes.retain(|outcome| {
            registry
                .get(&outcome.subscription)
                .is_some_and(|sub| principal.may_manage(sub.spec.owner.as_deref()).is_ok())
        });
    }
}
