//! `GET|POST /v1/subscriptions`, `GET|PUT|DELETE /v1/subscriptions/{name}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::publish::read_body;
use super::AppState;
use crate::auth::Principal;
use crate::delivery::registry::{Bounds, Created, Full};
use crate::delivery::subscription::Subscription;
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;
use crate::model::subscription::SubscriptionSpec;
use crate::publish::EventViolation;

fn store_error(err: redis::RedisError) -> ApiError {
    ApiError::store_unavailable("subscription store", err)
}

/// Parses and validates a subscription body, listing every problem with its path, and
/// checks that `principal` may own it: every topic pattern within what it may read, the
/// owner itself (an admin may name another).
fn parse(
    bytes: &[u8],
    name_from_path: Option<&str>,
    principal: &Principal,
    existing_owner: Option<Option<String>>,
) -> Result<Subscription, ApiError> {
    let invalid = |details: Vec<EventViolation>| ApiError {
        details,
        ..ApiError::new(
            ErrorCode::InvalidSubscription,
            "the subscription is not valid",
        )
    };
    let mut spec: SubscriptionSpec = ApiError::json_body(
        bytes,
        ErrorCode::InvalidSubscription,
        "the subscription is not valid",
    )?;
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
    // A Dapr app's subscription is read by evrouter from the app configured in
    // `[[dapr.apps]]`: it is sent to that app's address, with its API token and unsigned.
    // Through the API, a subscription is a webhook, whoever asks.
    if spec.dapr.is_some() {
        return Err(invalid(vec![EventViolation {
            index: None,
            path: "/dapr".into(),
            message: "set by evrouter for the apps of [[dapr.apps]]; a subscription made \
                      through the API is a webhook"
                .into(),
        }]));
    }
    match &spec.owner {
        Some(owner) if !principal.admin && Some(owner) != principal.owner().as_ref() => {
            return Err(ApiError::forbidden(crate::auth::Denied(format!(
                "only an admin may give a subscription to `{owner}`"
            ))));
        }
        Some(_) => {}
        // A replaced subscription keeps its owner unless the body names another.
        None => spec.owner = existing_owner.unwrap_or_else(|| principal.owner()),
    }
    if principal.max_in_flight > 0 && spec.max_in_flight > principal.max_in_flight {
        return Err(ApiError::forbidden(crate::auth::Denied(format!(
            "principal `{}` may ask for max_in_flight up to {}, not {}",
            principal.name, principal.max_in_flight, spec.max_in_flight
        ))));
    }
    for topic in &spec.topics {
        // A pattern that does not compile is reported with the others below.
        if crate::model::pattern::TopicPattern::parse(topic).is_ok() {
            principal.may_subscribe(topic)?;
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

/// Refuses endpoints on internal addresses (checked on what they resolve to now; every
/// connection is checked again).
async fn check_endpoints(app: &AppState, sub: &Subscription) -> Result<(), ApiError> {
    let mut details = Vec::new();
    for (i, endpoint) in sub.spec.endpoints.iter().enumerate() {
        if let Err(refused) = app.guard.check_url(endpoint).await {
            details.push(EventViolation {
                index: None,
                path: format!("/endpoints/{i}"),
                message: refused.0,
            });
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(ApiError {
        details,
        ..ApiError::new(
            ErrorCode::EndpointRefused,
            "an endpoint is on an address webhooks may not go to",
        )
    })
}

/// `GET /v1/subscriptions`.
/// An admin sees every subscription, any other principal its own.
pub async fn list(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Json<Vec<SubscriptionSpec>> {
    Json(
        app.delivery
            .registry()
            .all()
            .iter()
            .filter(|s| principal.may_manage(s.spec.owner.as_deref()).is_ok())
            .map(|s| s.spec.clone())
            .collect(),
    )
}

/// `GET /v1/subscriptions/{name}`.
pub async fn get(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<SubscriptionSpec>, ApiError> {
    let sub = app
        .delivery
        .registry()
        .get(&name)
        .ok_or_else(|| ApiError::unknown_subscription(&name))?;
    principal.may_manage(sub.spec.owner.as_deref())?;
    Ok(Json(sub.spec.clone()))
}

/// The bounds a new subscription must fit in: `delivery.max_subscriptions` in all and,
/// when the caller is to own it, the caller's `max_subscriptions` (an admin giving one to
/// another owner, and the caller of `mode = "none"`, are bounded by the total only).
/// Redis counts and stores in one step, so concurrent creations cannot pass them.
fn bounds<'a>(app: &AppState, principal: &'a Principal, sub: &'a Subscription) -> Bounds<'a> {
    let own = !principal.anonymous && sub.spec.owner.as_deref() == Some(principal.name.as_str());
    Bounds {
        owner: &principal.name,
        owner_max: if own { principal.max_subscriptions } else { 0 },
        total_max: app.delivery.max_subscriptions(),
    }
}

/// The refusal of a subscription beyond a bound: 403 `subscription_limit` when the caller
/// owns its most, 409 `subscription_limit_total` when evrouter holds its most.
fn refused(principal: &Principal, full: Full) -> ApiError {
    match full {
        Full::Owner { owned } => ApiError::new(
            ErrorCode::SubscriptionLimit,
            format!(
                "principal `{}` owns {owned} subscriptions, its most \
                 (auth.principals.max_subscriptions = {}); delete one first",
                principal.name, principal.max_subscriptions
            ),
        ),
        Full::Total { stored } => ApiError::new(
            ErrorCode::SubscriptionLimitTotal,
            format!(
                "evrouter holds {stored} subscriptions, its most \
                 (delivery.max_subscriptions); delete one first"
            ),
        ),
    }
}

/// Refuses a change to an existing subscription that `principal` may not manage.
pub(super) fn check_owner(
    app: &AppState,
    principal: &Principal,
    name: &str,
) -> Result<(), ApiError> {
    match app.delivery.registry().get(name) {
        Some(existing) => Ok(principal.may_manage(existing.spec.owner.as_deref())?),
        None => Ok(()),
    }
}

/// `POST /v1/subscriptions`: 201 created, 200 when the same one exists, 409 when a
/// different one of that name exists.
pub async fn create(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let sub = parse(&bytes, None, &principal, None)?;
    check_endpoints(&app, &sub).await?;
    check_owner(&app, &principal, sub.name())?;
    let created = app
        .delivery
        .create_within(&sub, bounds(&app, &principal, &sub))
        .await
        .map_err(store_error)?;
    match created {
        Created::New => {
            Ok((StatusCode::CREATED, Json(with_secret(&app, sub.spec))).into_response())
        }
        Created::Unchanged => Ok((StatusCode::OK, Json(sub.spec)).into_response()),
        Created::Full(full) => Err(refused(&principal, full)),
        Created::Conflict | Created::Replaced => Err(ApiError::new(
            ErrorCode::SubscriptionExists,
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
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_owner(&app, &principal, &name)?;
    let bytes = read_body(&headers, body, app.max_body_bytes, app.body_read_timeout).await?;
    let existing = app
        .delivery
        .registry()
        .get(&name)
        .map(|s| s.spec.owner.clone());
    let sub = parse(&bytes, Some(&name), &principal, existing)?;
    check_endpoints(&app, &sub).await?;
    let stored = app
        .delivery
        .put_within(&sub, bounds(&app, &principal, &sub))
        .await
        .map_err(store_error)?;
    match stored {
        Created::Full(full) => Err(refused(&principal, full)),
        Created::New => {
            Ok((StatusCode::CREATED, Json(with_secret(&app, sub.spec))).into_response())
        }
        _ => Ok((StatusCode::OK, Json(sub.spec)).into_response()),
    }
}

/// A new subscription's answer: the spec and, once, its signing secret.
fn with_secret(app: &AppState, spec: SubscriptionSpec) -> serde_json::Value {
    let secret = app
        .delivery
        .registry()
        .get(&spec.name)
        .and_then(|sub| sub.secrets.as_ref().map(|s| s.current.clone()));
    let mut answer = serde_json::to_value(&spec).unwrap_or_default();
    if let (Some(secret), Some(object)) = (secret, answer.as_object_mut()) {
        object.insert("signing_secret".into(), secret.into());
    }
    answer
}

/// `POST /v1/subscriptions/{name}/secret`: a new signing secret (shown in this answer
/// only); the old one keeps signing beside it for a day.
pub async fn rotate_secret(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_owner(&app, &principal, &name)?;
    match app
        .delivery
        .rotate_secrets(&name)
        .await
        .map_err(store_error)?
    {
        Some(secret) => Ok(Json(serde_json::json!({
            "name": name,
            "signing_secret": secret,
            "previous_valid_for_s": crate::model::signing::ROTATION_OVERLAP_MS / 1000,
        }))
        .into_response()),
        None if app.delivery.registry().get(&name).is_some() => Err(ApiError::new(
            ErrorCode::NotSigned,
            format!("`{name}` is a Dapr app's subscription: its deliveries are not signed"),
        )),
        None => Err(ApiError::unknown_subscription(&name)),
    }
}

/// The body of a rewind.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewindBody {
    /// RFC 3339 time: the subscription goes on from the first event stored at or after it.
    to: String,
}

/// `POST /v1/subscriptions/{name}/rewind`: moves the subscription back (or forward) to a
/// time on every partition; events stored since flow again, in order per key.
pub async fn rewind(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    check_owner(&app, &principal, &name)?;
    let bytes =
        super::publish::read_body(&headers, body, app.max_body_bytes, app.body_read_timeout)
            .await?;
    let request: RewindBody = ApiError::json_body(
        &bytes,
        ErrorCode::InvalidRequest,
        "the rewind body is not valid",
    )?;
    let to = humantime::parse_rfc3339_weak(&request.to).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`to` is not an RFC 3339 time ({e}): `{}`", request.to),
        )
    })?;
    let to_ms = to
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    use crate::delivery::rewind::RewindError;
    match app.delivery.rewind(&name, to_ms).await {
        Ok(rewound) => Ok(Json(rewound).into_response()),
        Err(RewindError::Unknown(_)) => Err(ApiError::unknown_subscription(&name)),
        Err(RewindError::Redis(err)) => Err(store_error(err)),
    }
}

/// `DELETE /v1/subscriptions/{name}`.
pub async fn delete(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_owner(&app, &principal, &name)?;
    if app.delivery.delete(&name).await.map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unknown_subscription(&name))
    }
}
