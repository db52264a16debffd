//! Which subscriber a subscription gets: delivery's [`Connector`], with the pooled clients
//! every subscriber shares (two: Dapr apps come from evrouter's own config and may be on
//! internal addresses, webhooks only where the guard allows).
//!
//! A subscription is sent as a Dapr app's (unguarded, with the app's token, over gRPC when
//! the app speaks it) only when its app is configured and every endpoint is that app's
//! configured address; any other subscription, whatever its `dapr` field says, is guarded
//! and sent without a token.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::dapr::grpc::AppChannel;
use super::dapr::health::AppHealth;
use super::dapr::subscriber::{Configured, DaprApp};
use super::endpoints::Endpoints;
use super::guard::Guard;
use super::post::Poster;
use super::subscriber::Webhook;
use super::{Client, Roots};
use crate::delivery::subscription::Subscription;
use crate::delivery::transport::{Connector, Subscriber};
use crate::model::dead_letter::Forward;
use crate::model::subscription::DaprTarget;

/// Makes the subscriber of every subscription: a [`Webhook`], or a [`DaprApp`] for one with
/// a `dapr` target.
pub struct Webhooks {
    client: Client,
    apps: Client,
    guard: Arc<Guard>,
    forwards: Option<mpsc::Sender<Forward>>,
    app_tokens: HashMap<String, Arc<str>>,
    app_urls: HashMap<String, String>,
    app_health: Arc<AppHealth>,
}

impl Webhooks {
    /// Subscribers sending with fresh clients; exhausted events of Dapr subscriptions with
    /// a `deadLetterTopic` go to `forwards` (to be published there).
    pub fn new(guard: Arc<Guard>, roots: &Roots, forwards: Option<mpsc::Sender<Forward>>) -> Self {
        Self {
            client: Client::new(guard.clone(), roots),
            apps: Client::new(
                Arc::new(Guard::new(&["0.0.0.0/0".into(), "::/0".into()])),
                roots,
            ),
            guard,
            forwards,
            app_tokens: HashMap::new(),
            app_urls: HashMap::new(),
            app_health: Arc::new(AppHealth::default()),
        }
    }

    /// Sends nothing to a Dapr app whose health checks find it unhealthy.
    pub fn with_app_health(mut self, health: Arc<AppHealth>) -> Self {
        self.app_health = health;
        self
    }

    /// Sends each Dapr app its API token (by app id) as `dapr-api-token`.
    pub fn with_app_tokens(mut self, tokens: HashMap<String, Arc<str>>) -> Self {
        self.app_tokens = tokens;
        self
    }

    /// The configured Dapr apps' addresses, by app id: the only addresses a subscription
    /// reaches as a Dapr app.
    pub fn with_app_urls<'a>(mut self, apps: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.app_urls = apps
            .into_iter()
            .map(|(id, url)| (id.to_string(), url.trim_end_matches('/').to_string()))
            .collect();
        self
    }

    /// Whether `target` is a configured app's and every endpoint of `sub` is that app's
    /// own address.
    fn is_configured_app(&self, sub: &Subscription, target: &DaprTarget) -> bool {
        let Some(url) = self.app_urls.get(&target.app_id) else {
            return false;
        };
        let endpoints = &sub.spec.endpoints;
        !endpoints.is_empty() && endpoints.iter().all(|e| e.trim_end_matches('/') == url)
    }

    /// How `sub`'s requests go out: unguarded with the app's token for a configured app,
    /// else guarded without a token.
    fn poster(&self, sub: &Arc<Subscription>, app: Option<&DaprTarget>) -> Poster {
        Poster {
            sub: sub.clone(),
            endpoints: Arc::new(Endpoints::new(&sub.spec.endpoints, &sub.spec.breaker)),
            client: if app.is_some() {
                self.apps.clone()
            } else {
                self.client.clone()
            },
            guard: app.is_none().then(|| self.guard.clone()),
            app_token: app.and_then(|d| self.app_tokens.get(&d.app_id).cloned()),
        }
    }
}

impl Connector for Webhooks {
    fn connect(&self, sub: &Arc<Subscription>) -> Arc<dyn Subscriber> {
        let Some(target) = &sub.spec.dapr else {
            return Arc::new(Webhook {
                poster: self.poster(sub, None),
            });
        };
        if !self.is_configured_app(sub, target) {
            tracing::warn!(subscription = %sub.spec.name, "a Dapr subscription not to its configured app's address: sent as a webhook, guarded and without a token");
            return Arc::new(DaprApp {
                poster: self.poster(sub, None),
                target: target.clone(),
                configured: None,
            });
        }
        Arc::new(DaprApp {
            poster: self.poster(sub, Some(target)),
            target: target.clone(),
            configured: Some(Configured {
                forwards: self.forwards.clone(),
                grpc: target.grpc.then(|| {
                    sub.spec
                        .endpoints
                        .iter()
                        .map(|url| AppChannel::new(url))
                        .collect()
                }),
                health: self.app_health.flag(&target.app_id),
            }),
        })
    }
}
