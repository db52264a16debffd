//! The `[dapr]` section: the Dapr sidecar API's pubsub names, the apps whose
//! subscriptions evrouter reads (and how it checks their health), declarative
//! subscriptions, and the gRPC listener.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// The Dapr sidecar API evrouter also serves (`/v1.0/publish/...`, `/dapr/subscribe`).
#[derive(Debug, Clone, Serialize, Deserialize)]
// Unknown keys are reported by the section reader, with the others.
#[serde(default)]
pub struct DaprConfig {
    /// Pubsub component names the Dapr API accepts (`[[dapr.pubsubs]]`); `pubsub` when
    /// the section is not given.
    pub pubsubs: Vec<DaprPubsubConfig>,
    /// Apps whose `GET /dapr/subscribe` is read into subscriptions (`[[dapr.apps]]`).
    pub apps: Vec<DaprAppConfig>,
    /// A folder of declarative `dapr.io/v2alpha1` `Subscription` YAML files.
    pub subscriptions_dir: Option<PathBuf>,
    /// How often apps' subscriptions are read again.
    pub refresh_interval: ConfigDuration,
    /// Where the Dapr runtime API is served over gRPC (`DAPR_GRPC_PORT` of the apps);
    /// empty: not served.
    pub grpc_listen: String,
    /// A gRPC connection with no call in flight for this long is closed (GOAWAY). Its
    /// HTTP/2 preface and first frame must arrive within `server.header_read_timeout`.
    pub grpc_idle_timeout: ConfigDuration,
    /// How often evrouter pings a gRPC connection (HTTP/2 PING) to find a dead peer.
    pub grpc_keepalive_interval: ConfigDuration,
    /// A ping not answered within this time closes the connection.
    pub grpc_keepalive_timeout: ConfigDuration,
    /// Most calls in flight at once on one gRPC connection.
    pub grpc_max_concurrent_streams: u32,
}

impl Default for DaprConfig {
    fn default() -> Self {
        Self {
            pubsubs: vec![DaprPubsubConfig {
                name: "pubsub".into(),
                topic_prefix: String::new(),
                allowed_topics: Vec::new(),
            }],
            apps: Vec::new(),
            subscriptions_dir: None,
            refresh_interval: "30s".into(),
            grpc_listen: "127.0.0.1:50001".into(),
            grpc_idle_timeout: "5m".into(),
            grpc_keepalive_interval: "30s".into(),
            grpc_keepalive_timeout: "10s".into(),
            grpc_max_concurrent_streams: 100,
        }
    }
}

/// One Dapr pubsub name and how its topics map to evrouter's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
// Unknown keys are reported by the section reader, with the others.
#[serde(default)]
pub struct DaprPubsubConfig {
    /// The name apps publish to (`/v1.0/publish/{name}/{topic}`).
    pub name: String,
    /// Put in front of every topic of this pubsub (e.g. `billing.`), so that two pubsubs
    /// can keep topics of the same name apart; empty shares evrouter's topics.
    pub topic_prefix: String,
    /// When not empty, the only topics apps may publish to (others get 403).
    pub allowed_topics: Vec<String>,
}

/// An app whose subscriptions evrouter reads, as the Dapr sidecar does.
#[derive(Debug, Clone, Serialize, Deserialize)]
// Unknown keys are reported by the section reader, with the others.
#[serde(default)]
pub struct DaprAppConfig {
    /// The app id (Dapr's `--app-id`); used in subscription names and scopes.
    pub id: String,
    /// Base URL of the app, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Attempts per event before it is dead-lettered (and sent to `deadLetterTopic`).
    pub max_attempts: u32,
    /// First retry delay; it doubles with each attempt.
    pub retry_initial_ms: u64,
    /// An environment variable holding the app's API token (Dapr's `APP_API_TOKEN`), sent
    /// as `dapr-api-token` with every request to the app.
    pub app_api_token_env: Option<String>,
    /// How the app is called: `http` (`/dapr/subscribe` and routes) or `grpc` (the
    /// `AppCallback` service at `url`, e.g. `http://127.0.0.1:50051`).
    pub protocol: AppProtocol,
    /// Probe the app's health (Dapr's `--enable-app-health-check`): nothing is delivered
    /// to it before its first good probe, nor after `health_threshold` failed ones in a
    /// row, until one succeeds again.
    pub health_check: bool,
    /// The path probed over HTTP (`GET`, healthy on 2xx); gRPC apps are asked
    /// `AppCallbackHealthCheck/HealthCheck`.
    pub health_path: String,
    /// Time between two probes.
    pub health_interval: ConfigDuration,
    /// How long a probe may take before it counts as failed.
    pub health_timeout: ConfigDuration,
    /// Failed probes in a row that make the app unhealthy.
    pub health_threshold: u32,
    /// The principal (of `[[auth.principals]]`) whose publish rights and quota apply to
    /// what evrouter publishes for the app: its subscriptions' `deadLetterTopic`s. With
    /// authentication on, an app without one has no dead-letter topic (its exhausted
    /// events stay in the subscription's DLQ).
    pub principal: Option<String>,
}

/// How a Dapr app is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP: `GET /dapr/subscribe`, events POSTed to routes.
    #[default]
    Http,
    /// gRPC: `ListTopicSubscriptions`, `OnTopicEvent`, `OnBulkTopicEvent`.
    Grpc,
}

impl Default for DaprAppConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            url: String::new(),
            max_attempts: 5,
            retry_initial_ms: 100,
            app_api_token_env: None,
            protocol: AppProtocol::Http,
            health_check: false,
            health_path: "/health".into(),
            health_interval: "5s".into(),
            health_timeout: "500ms".into(),
            health_threshold: 3,
            principal: None,
        }
    }
}
