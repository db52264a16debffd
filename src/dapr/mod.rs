//! The Dapr sidecar's pub/sub API, so that services written against the Dapr SDKs publish
//! to and receive from evrouter without a change: publish and bulk publish with
//! CloudEvents, apps' `/dapr/subscribe` read into subscriptions, deliveries as CloudEvents
//! with routing rules, and Dapr's answers.

pub mod apps;
pub mod cloudevent;
pub mod deliver;
pub mod error;
pub mod publish;
pub mod routing;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use serde_json::json;

use crate::config::{DaprConfig, DaprPubsubConfig};
use crate::ingress::AppState;
use error::DaprError;

/// The Dapr API's settings: which pubsub names exist and how their topics map.
#[derive(Debug, Default)]
pub struct DaprApi {
    pubsubs: HashMap<String, DaprPubsubConfig>,
}

impl DaprApi {
    /// The API of a validated config.
    pub fn new(config: &DaprConfig) -> Self {
        Self {
            pubsubs: config
                .pubsubs
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
        }
    }

    /// Names of the configured pubsubs.
    pub fn pubsub_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pubsubs.keys().cloned().collect();
        names.sort();
        names
    }

    /// The evrouter topic a Dapr topic of `pubsub` is stored under, or Dapr's refusal.
    pub fn target(&self, pubsub: &str, topic: &str) -> Result<String, DaprError> {
        let config = self.pubsubs.get(pubsub).ok_or_else(|| {
            DaprError::new(
                StatusCode::NOT_FOUND,
                "ERR_PUBSUB_NOT_FOUND",
                format!("pubsub {pubsub} is not found"),
            )
        })?;
        if topic.is_empty() {
            return Err(DaprError::new(
                StatusCode::NOT_FOUND,
                "ERR_TOPIC_NAME_EMPTY",
                format!("topic is empty in pubsub {pubsub}"),
            ));
        }
        if !config.allowed_topics.is_empty() && !config.allowed_topics.iter().any(|t| t == topic) {
            return Err(DaprError::new(
                StatusCode::FORBIDDEN,
                "ERR_PUBSUB_FORBIDDEN",
                format!("topic {topic} is not allowed for pubsub {pubsub}"),
            ));
        }
        map_topic(&config.topic_prefix, topic).ok_or_else(|| {
            DaprError::new(
                StatusCode::BAD_REQUEST,
                "ERR_PUBSUB_TOPIC_INVALID",
                format!(
                    "topic `{topic}` cannot be mapped to an evrouter topic: use letters, digits, \
                     `_`, `-`, `.` and `/` (read as `.`), without empty segments"
                ),
            )
        })
    }
}

/// Reads a Dapr boolean as Dapr's `IsTruthy` does: `true`, `1`, `yes`, `on`, `y` (any case)
/// are true; `false`, `0`, `no`, `off`, `n` and empty are false; anything else is not a
/// boolean.
pub fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "" => Some(false),
        _ => None,
    }
}

/// The evrouter topic of a Dapr topic: the pubsub's prefix, then the topic lower-cased
/// with `/` read as `.` (so `orders/Created` is `orders.created`).
pub fn map_topic(prefix: &str, topic: &str) -> Option<String> {
    let mapped = format!("{prefix}{}", topic.to_ascii_lowercase().replace('/', "."));
    crate::topic::check_topic(&mapped).ok().map(|()| mapped)
}

/// The Dapr API's routes, merged into the main router.
pub fn routes() -> axum::Router<Arc<AppState>> {
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
/// the shape of Dapr's metadata API (the SDKs wait for a non-empty answer).
async fn metadata(State(app): State<Arc<AppState>>) -> impl IntoResponse {
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
        .router
        .registry()
        .all()
        .iter()
        .filter_map(|sub| {
            let target = sub.spec.dapr.as_ref()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_topics_map_to_evrouter_topics() {
        assert_eq!(map_topic("", "orders").as_deref(), Some("orders"));
        assert_eq!(
            map_topic("", "order/Created").as_deref(),
            Some("order.created")
        );
        assert_eq!(
            map_topic("billing.", "invoices").as_deref(),
            Some("billing.invoices")
        );
        assert_eq!(map_topic("", "a//b"), None);
        assert_eq!(map_topic("", "has space"), None);
    }

    #[test]
    fn unknown_pubsubs_and_forbidden_topics_are_refused() {
        let api = DaprApi::new(&DaprConfig {
            pubsubs: vec![DaprPubsubConfig {
                name: "pubsub".into(),
                topic_prefix: String::new(),
                allowed_topics: vec!["orders".into()],
            }],
            ..DaprConfig::default()
        });
        assert_eq!(api.target("pubsub", "orders").expect("ok"), "orders");
        assert_eq!(
            api.target("other", "orders").expect_err("404").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api.target("pubsub", "").expect_err("404").code,
            "ERR_TOPIC_NAME_EMPTY"
        );
        assert_eq!(
            api.target("pubsub", "payments").expect_err("403").status,
            StatusCode::FORBIDDEN
        );
    }
}
