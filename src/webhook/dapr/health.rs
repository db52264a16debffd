//! Dapr app health checks (Dapr's `--enable-app-health-check`): every app with
//! `health_check = true` is probed each `health_interval`, over HTTP with
//! `GET {url}{health_path}` (healthy on a 2xx within `health_timeout`) or over gRPC with
//! `AppCallbackHealthCheck/HealthCheck`. An app is unhealthy until its first good probe,
//! and again after `health_threshold` failed probes in a row; one good probe makes it
//! healthy. While an app is unhealthy its subscriptions send it nothing: their events wait
//! in Redis and no attempt is counted, as Dapr unsubscribes such an app.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{AppProtocol, DaprAppConfig};

/// How often a paused subscription looks again whether its app is back.
const RECHECK: Duration = Duration::from_millis(250);

/// Whether an app with health checks is healthy now; shared by its prober and its
/// subscriptions.
#[derive(Debug, Clone, Default)]
pub struct AppHealthFlag(Arc<AtomicBool>);

impl AppHealthFlag {
    /// When the app is unhealthy, the time to look again.
    pub fn paused_until(&self) -> Option<Instant> {
        (!self.0.load(Ordering::Relaxed)).then(|| Instant::now() + RECHECK)
    }

    fn set(&self, healthy: bool) -> bool {
        self.0.swap(healthy, Ordering::Relaxed)
    }
}

/// The health of every app that asked for health checks, by app id.
#[derive(Debug, Default)]
pub struct AppHealth {
    flags: HashMap<String, AppHealthFlag>,
}

impl AppHealth {
    /// A flag for each app of `apps` with `health_check = true`; each starts unhealthy.
    pub fn new(apps: &[DaprAppConfig]) -> Self {
        Self {
            flags: apps
                .iter()
                .filter(|app| app.health_check)
                .map(|app| (app.id.clone(), AppHealthFlag::default()))
                .collect(),
        }
    }

    /// The flag of app `id`, if its health is checked.
    pub fn flag(&self, id: &str) -> Option<AppHealthFlag> {
        self.flags.get(id).cloned()
    }

    /// Each checked app's id and whether it is healthy now, by id.
    pub fn states(&self) -> Vec<(String, bool)> {
        let mut states: Vec<(String, bool)> = self
            .flags
            .iter()
            .map(|(id, flag)| (id.clone(), flag.0.load(Ordering::Relaxed)))
            .collect();
        states.sort();
        states
    }

    /// Probes every checked app of `apps` until the task is aborted, one loop per app;
    /// `tokens` are the apps' API tokens by id, sent as `dapr-api-token`.
    pub fn spawn(
        self: Arc<Self>,
        apps: Vec<DaprAppConfig>,
        tokens: HashMap<String, Arc<str>>,
    ) -> tokio::task::JoinHandle<()> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        tokio::spawn(async move {
            let mut loops = tokio::task::JoinSet::new();
            for app in apps {
                let Some(flag) = self.flag(&app.id) else {
                    continue;
                };
                let prober = Prober {
                    token: tokens.get(&app.id).cloned(),
                    channel: (app.protocol == AppProtocol::Grpc)
                        .then(|| super::grpc::AppChannel::new(app.url.trim_end_matches('/')))
                        .flatten(),
                    client: client.clone(),
                    app,
                };
                loops.spawn(prober.run(flag));
            }
            while loops.join_next().await.is_some() {}
        })
    }
}

/// Probes one app.
struct Prober {
    app: DaprAppConfig,
    token: Option<Arc<str>>,
    channel: Option<super::grpc::AppChannel>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prober {
    async fn run(self, flag: AppHealthFlag) {
        let interval = self.app.health_interval.get();
        let threshold = self.app.health_threshold.max(1);
        let mut failures = 0u32;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.probe().await {
                failures = 0;
                if !flag.set(true) {
                    tracing::info!(app = %self.app.id, "dapr app healthy: delivering to it");
                }
            } else {
                failures = failures.saturating_add(1);
                if failures >= threshold && flag.set(false) {
                    tracing::warn!(app = %self.app.id, failures, "dapr app unhealthy: nothing is delivered to it until a health probe succeeds");
                }
            }
        }
    }

    /// One probe: whether the app answered healthy within the timeout.
    async fn probe(&self) -> bool {
        let timeout = self.app.health_timeout.get();
        let token = self.token.as_deref();
        if self.app.protocol == AppProtocol::Grpc {
            return match &self.channel {
                Some(channel) => channel.healthy(timeout, token).await,
                None => false,
            };
        }
        let url = format!(
            "{}{}",
            self.app.url.trim_end_matches('/'),
            self.app.health_path
        );
        let Ok(uri) = url.parse::<hyper::Uri>() else {
            return false;
        };
        let mut request = hyper::Request::get(uri);
        if let Some(token) = token {
            request = request.header("dapr-api-token", token);
        }
        let Ok(request) = request.body(Empty::new()) else {
            return false;
        };
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => response.status().is_success(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checked_apps_have_a_flag_and_it_starts_unhealthy() {
        let apps = [
            DaprAppConfig {
                id: "checked".into(),
                health_check: true,
                ..DaprAppConfig::default()
            },
            DaprAppConfig {
                id: "trusted".into(),
                ..DaprAppConfig::default()
            },
        ];
        let health = AppHealth::new(&apps);
        assert!(health.flag("trusted").is_none());
        let flag = health.flag("checked").expect("a flag");
        assert!(
            flag.paused_until().is_some(),
            "unhealthy until a good probe"
        );
        flag.set(true);
        assert!(flag.paused_until().is_none());
    }
}
