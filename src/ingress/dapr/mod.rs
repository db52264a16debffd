//! The Dapr sidecar's HTTP API, so that services written against the Dapr SDKs publish to
//! evrouter without a change: publish and bulk publish, metadata, health, and the refresh
//! of an app's subscriptions. Bodies become envelopes in [`crate::publish::dapr`]; apps are
//! called by [`crate::webhook`].

pub mod apps;
pub mod error;
pub mod grpc;
pub mod grpc_serve;
pub mod publish;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde_json::json;

use crate::auth::Principal;
use crate::ingress::AppState;

/// The Dapr API's router, merged into the main one.
pub fn router() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(publish::publish).put(publish::publish),
        )
        .route(
            "/v1.0/publish/{pubsub}",
            post(publish::empty_topic).put(publish::empty_topic),
        )
        .route(
            "/v1.0/publish/{pubsub}/",
            post(publish::empty_topic).put(publish::empty_topic),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(publish::publish_bulk),
        )
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(publish::publish_bulk),
        )
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz))
        .route("/v1/dapr/apps/{id}/refresh", post(apps::refresh))
}

/// `GET /v1.0/healthz`: 204 while serving, as the sidecar answers.
async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /v1.0/metadata`: the pubsub components and the subscriptions read from apps, in
/// the shape of Dapr's metadata API (the SDKs wait for a non-empty answer). As a sidecar
/// shows its own app's, a caller sees the subscriptions of the apps it is the principal of
/// (`dapr.apps[].principal`); an admin sees every app's.
async fn metadata(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
) -> impl IntoResponse {
    let components: Vec<_> = app
        .dapr
        .pubsub_names()
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "type": "pubsub.evrouter",
                "version": "v1",
                "capabilities": ["BULK_PUBLISH", "TTL"],
            })
        })
        .collect();
    let subscriptions: Vec<_> = app
        .delivery
        .registry()
        .all()
        .iter()
        .filter_map(|sub| {
            let target = sub.spec.dapr.as_ref()?;
            let own = app
                .dapr_apps
                .app(&target.app_id)
                .is_some_and(|a| a.principal.as_deref() == Some(principal.name.as_str()));
            if !(principal.admin || own) {
                return None;
            }
            Some(json!({
                "pubsubname": target.pubsubname,
                "topic": target.topic,
                "deadLetterTopic": target.dead_letter_topic.clone().unwrap_or_default(),
                "metadata": { "rawPayload": target.raw_payload.to_string() },
                "rules": target.rules.iter().map(|r| json!({"match": r.matches, "path": r.path}))
                    .chain(target.default_path.iter().map(|p| json!({"match": "", "path": p})))
                    .collect::<Vec<_>>(),
                "type": "PROGRAMMATIC",
            }))
        })
        .collect();
    Json(json!({
        "id": "evrouter",
        "runtimeVersion": concat!("evrouter-", env!("CARGO_PKG_VERSION")),
        "enabledFeatures": [],
        "actors": [],
        "components": components,
        "subscriptions": subscriptions,
        "extended": { "daprRuntimeVersion": "evrouter" },
    }))
}
