//! Dapr apps' subscriptions: each configured app's `GET /dapr/subscribe` is read at start,
//! again on an interval and on request, and every entry becomes an evrouter subscription
//! that delivers CloudEvents to the app's routes. An app that is down is tried again,
//! never fatal; entries an app no longer lists are removed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::auth::Principal;
use crate::config::{AppProtocol, DaprAppConfig};
use crate::delivery::subscription::Subscription;
use crate::delivery::Runtime;
use crate::model::subscription::{
    BackoffSpec, BulkSpec, DaprTarget, DeliveryMode, RouteRule, SubscriptionSpec,
};
use crate::model::sync::lock;
use crate::publish::dapr::{truthy, DaprPubsubs};

/// Largest `/dapr/subscribe` answer read.
const MAX_SUBSCRIBE_BYTES: usize = 1 << 20;

/// One entry of an app's `GET /dapr/subscribe`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeEntry {
    pubsubname: String,
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<Routes>,
    #[serde(default)]
    metadata: std::collections::HashMap<String, Value>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    bulk_subscribe: Option<BulkSubscribe>,
}

#[derive(Debug, Deserialize)]
struct Routes {
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    /// Empty or missing: always matches.
    #[serde(rename = "match", default)]
    matches: String,
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkSubscribe {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: Option<usize>,
    #[serde(default)]
    max_await_duration_ms: Option<u64>,
}

impl From<dapr::dapr::proto::runtime::v1::TopicSubscription> for SubscribeEntry {
    /// A gRPC app's subscription, as the same entry `/dapr/subscribe` lists.
    fn from(listed: dapr::dapr::proto::runtime::v1::TopicSubscription) -> Self {
        Self {
            pubsubname: listed.pubsub_name,
            topic: listed.topic,
            route: None,
            routes: listed.routes.map(|routes| Routes {
                rules: routes
                    .rules
                    .into_iter()
                    .map(|r| Rule {
                        matches: r.r#match,
                        path: r.path,
                    })
                    .collect(),
                default: Some(routes.default),
            }),
            metadata: listed
                .metadata
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
            dead_letter_topic: Some(listed.dead_letter_topic),
            bulk_subscribe: listed.bulk_subscribe.map(|b| BulkSubscribe {
                enabled: b.enabled,
                max_messages_count: usize::try_from(b.max_messages_count)
                    .ok()
                    .filter(|n| *n > 0),
                max_await_duration_ms: u64::try_from(b.max_await_duration_ms)
                    .ok()
                    .filter(|n| *n > 0),
            }),
        }
    }
}

/// A declarative subscription file (`dapr.io/v1alpha1` or `v2alpha1`, kind
/// `Subscription`): its `spec` has the same fields as a `/dapr/subscribe` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Declarative {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    spec: SubscribeEntry,
    /// App ids the subscription is for; none means every app.
    #[serde(default)]
    scopes: Vec<String>,
}

/// Reads every `*.yaml` / `*.yml` file of `dir` (several documents per file allowed);
/// a file or document that cannot be read is logged and skipped.
fn read_declarative(dir: &std::path::Path) -> Vec<Declarative> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "dapr subscriptions folder not readable");
        return found;
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            tracing::warn!(file = %path.display(), "dapr subscription file not readable");
            continue;
        };
        for document in yaml_serde::Deserializer::from_str(&text) {
            match Declarative::deserialize(document) {
                Ok(d) if d.kind == "Subscription" && d.api_version.starts_with("dapr.io/") => {
                    found.push(d)
                }
                Ok(d) => {
                    tracing::warn!(file = %path.display(), kind = %d.kind, api_version = %d.api_version, "not a dapr.io Subscription; skipped")
                }
                Err(err) => {
                    // The rest of the file cannot be trusted (and the parser would repeat
                    // the error for every document left).
                    tracing::warn!(file = %path.display(), error = %err, "dapr subscription file not understood; the rest of it skipped");
                    break;
                }
            }
        }
    }
    found
}

/// Why an app's subscriptions could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The app did not answer.
    #[error(
        "app {app} did not answer GET /dapr/subscribe (ListTopicSubscriptions over gRPC): {why}"
    )]
    Unreachable {
        /// The app id.
        app: String,
        /// What failed.
        why: String,
    },
    /// The app answered something else than a subscription list.
    #[error("app {app} answered GET /dapr/subscribe with {why}")]
    BadAnswer {
        /// The app id.
        app: String,
        /// What was wrong.
        why: String,
    },
    /// Redis did not store the subscriptions.
    #[error("storing the subscriptions of app {app} failed: {why}")]
    Store {
        /// The app id.
        app: String,
        /// The Redis error.
        why: String,
    },
}

/// Keeps the subscriptions of every configured app in step with what the app lists.
pub struct AppSubscriptions {
    apps: Vec<DaprAppConfig>,
    /// Subscriptions left out of their app's last answers, with how many in a row.
    missing: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    declarative_dir: Option<std::path::PathBuf>,
    api: Arc<DaprPubsubs>,
    delivery: Arc<Runtime>,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Apps' API tokens, by app id.
    app_tokens: std::collections::HashMap<String, Arc<str>>,
    /// The principal each app publishes its dead-letter topics with, by app id.
    publishers: std::collections::HashMap<String, Arc<Principal>>,
}

impl AppSubscriptions {
    /// The app watcher over `apps`, with declarative subscriptions from `declarative_dir`.
    pub fn new(
        apps: Vec<DaprAppConfig>,
        declarative_dir: Option<std::path::PathBuf>,
        api: Arc<DaprPubsubs>,
        delivery: Arc<Runtime>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            apps,
            missing: std::sync::Mutex::new(std::collections::HashMap::new()),
            declarative_dir,
            api,
            delivery,
            client: Client::builder(TokioExecutor::new()).build(connector),
            app_tokens: std::collections::HashMap::new(),
            publishers: std::collections::HashMap::new(),
        }
    }

    /// Sends each app its API token (by app id) as `dapr-api-token`.
    pub fn with_app_tokens(mut self, tokens: std::collections::HashMap<String, Arc<str>>) -> Self {
        self.app_tokens = tokens;
        self
    }

    /// The principal each app publishes its dead-letter topics with (by app id): an app
    /// without one has no dead-letter topic.
    pub fn with_publishers(
        mut self,
        publishers: std::collections::HashMap<String, Arc<Principal>>,
    ) -> Self {
        self.publishers = publishers;
        self
    }

    /// Why `app` may not dead-letter the events of `topic` into `dead_letter`, if it may
    /// not: a topic the subscription reads itself, or one its principal may not publish to.
    fn dead_letter_refusal(
        &self,
        app: &DaprAppConfig,
        topic: &str,
        dead_letter: &str,
    ) -> Option<String> {
        if dead_letter == topic {
            return Some("it is the topic the subscription reads (a loop)".into());
        }
        match self.publishers.get(&app.id) {
            None => Some(format!(
                "app `{}` has no principal to publish it with (dapr.apps[].principal)",
                app.id
            )),
            Some(principal) => principal.may_publish(dead_letter).err().map(|d| d.0),
        }
    }

    /// Reads every app now, then again every `interval`; an app not read yet is tried
    /// every second until it answers.
    pub fn spawn(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // One loop per app, so that an app that hangs delays no other; aborting this
            // task drops the set and stops them all.
            let mut loops = tokio::task::JoinSet::new();
            for index in 0..self.apps.len() {
                let watcher = self.clone();
                loops.spawn(async move { watcher.watch(index, interval).await });
            }
            while loops.join_next().await.is_some() {}
        })
    }

    /// Reads app `index` until it answers (every second), then every `interval`.
    async fn watch(&self, index: usize, interval: Duration) {
        let Some(app) = self.apps.get(index) else {
            return;
        };
        let mut read_once = false;
        loop {
            match self.sync(app).await {
                Ok(names) => {
                    if !read_once {
                        tracing::info!(app = %app.id, subscriptions = names.len(), "dapr app subscriptions read");
                    }
                    read_once = true;
                }
                Err(err) => tracing::warn!(error = %err, "dapr app not read; will try again"),
            }
            let pause = if read_once {
                interval
            } else {
                Duration::from_secs(1).min(interval)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The app of this id, if configured.
    pub fn app(&self, id: &str) -> Option<&DaprAppConfig> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// Reads one app's subscriptions (its `/dapr/subscribe`, then the declarative ones
    /// scoped to it) and stores them; removes the ones no longer listed. Returns the
    /// names of its subscriptions.
    pub async fn sync(&self, app: &DaprAppConfig) -> Result<Vec<String>, AppError> {
        let (mut entries, listed) = self.fetch(app).await?;
        if let Some(dir) = &self.declarative_dir {
            entries.extend(
                read_declarative(dir)
                    .into_iter()
                    .filter(|d| d.scopes.is_empty() || d.scopes.iter().any(|s| s == &app.id))
                    .map(|d| d.spec),
            );
        }
        let mut wanted: Vec<SubscriptionSpec> = Vec::new();
        for entry in entries {
            match self.spec_of(app, entry) {
                // One subscription per pubsub and topic: the first listed wins.
                Ok(spec) if wanted.iter().any(|w| w.name == spec.name) => {
                    tracing::warn!(app = %app.id, subscription = %spec.name, "a second subscription to the same topic; ignored")
                }
                Ok(spec) => wanted.push(spec),
                Err(why) => tracing::warn!(app = %app.id, %why, "dapr subscription skipped"),
            }
        }
        let store_error = |e: redis::RedisError| AppError::Store {
            app: app.id.clone(),
            why: e.to_string(),
        };
        let current: Vec<Arc<Subscription>> = self
            .delivery
            .registry()
            .all()
            .into_iter()
            .filter(|s| s.spec.dapr.as_ref().is_some_and(|d| d.app_id == app.id))
            .collect();
        let mut names = Vec::new();
        for spec in wanted {
            names.push(spec.name.clone());
            let existing = current.iter().find(|s| s.spec.name == spec.name);
            if existing.is_some_and(|s| s.spec == spec) {
                continue;
            }
            let sub = match Subscription::new(spec) {
                Ok(sub) => sub,
                Err(problems) => {
                    let why: Vec<String> = problems
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message))
                        .collect();
                    tracing::warn!(app = %app.id, problems = ?why, "dapr subscription refused");
                    // A refused change keeps the subscription as it was (its groups hold
                    // what was not delivered yet); a refused new one is not listed.
                    if existing.is_none() {
                        names.pop();
                    }
                    continue;
                }
            };
            if existing.is_some() {
                self.delivery.put(&sub).await.map_err(store_error)?;
            } else {
                self.delivery.create(&sub).await.map_err(store_error)?;
            }
        }
        // Removing a subscription destroys its consumer groups, so it takes two answers in
        // a row that leave it out (an app that is still starting may list nothing yet).
        // An app that answers 404 (restarting behind another server, say) has not said
        // what it no longer wants: nothing counts then.
        let mut gone = Vec::new();
        {
            let mut missing = lock(&self.missing);
            for sub in &current {
                let name = &sub.spec.name;
                if names.contains(name) {
                    missing.remove(name);
                } else if listed {
                    let count = missing.entry(name.clone()).or_insert(0);
                    *count += 1;
                    if *count >= 2 {
                        missing.remove(name);
                        gone.push(name.clone());
                    }
                }
            }
        }
        for name in gone {
            self.delivery.delete(&name).await.map_err(store_error)?;
        }
        Ok(names)
    }

    /// The app's entries, and whether it answered with a list (`false` for a 404).
    async fn fetch(&self, app: &DaprAppConfig) -> Result<(Vec<SubscribeEntry>, bool), AppError> {
        let unreachable = |why: String| AppError::Unreachable {
            app: app.id.clone(),
            why,
        };
        if app.protocol == AppProtocol::Grpc {
            let channel = super::grpc::AppChannel::new(app.url.trim_end_matches('/'))
                .ok_or_else(|| unreachable(format!("`{}` is not a URL", app.url)))?;
            let token = self.app_tokens.get(&app.id).map(|t| &**t);
            let listed = channel
                .subscriptions(Duration::from_secs(5), token)
                .await
                .map_err(unreachable)?;
            return Ok((listed.into_iter().map(SubscribeEntry::from).collect(), true));
        }
        let uri: hyper::Uri = format!("{}/dapr/subscribe", app.url.trim_end_matches('/'))
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| unreachable(e.to_string()))?;
        let mut request = hyper::Request::get(uri).header("accept", "application/json");
        if let Some(token) = self.app_tokens.get(&app.id) {
            request = request.header("dapr-api-token", &**token);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_SUBSCRIBE_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| unreachable("no answer within 5s".into()))?
            .map_err(unreachable)?;
        // An app without programmatic subscriptions may not serve the path at all.
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok((Vec::new(), false));
        }
        if !status.is_success() {
            return Err(AppError::BadAnswer {
                app: app.id.clone(),
                why: format!("status {status}"),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok((Vec::new(), true));
        }
        serde_json::from_slice(&body)
            .map(|entries| (entries, true))
            .map_err(|e| AppError::BadAnswer {
                app: app.id.clone(),
                why: format!("a body that is not a subscription list: {e}"),
            })
    }

    fn spec_of(
        &self,
        app: &DaprAppConfig,
        entry: SubscribeEntry,
    ) -> Result<SubscriptionSpec, String> {
        let topic = self
            .api
            .target(&entry.pubsubname, &entry.topic)
            .map_err(|e| e.to_string())?;
        // A gRPC app's paths are sent as it listed them; an HTTP app's are URL paths.
        let grpc = app.protocol == AppProtocol::Grpc;
        let path = |p: &str| {
            if grpc {
                p.to_string()
            } else {
                leading_slash(p)
            }
        };
        let (rules, mut default_path) = match entry.routes {
            Some(routes) => (
                routes
                    .rules
                    .into_iter()
                    .map(|r| RouteRule {
                        matches: r.matches,
                        path: path(&r.path),
                    })
                    .collect(),
                routes.default.filter(|d| !d.is_empty()).map(|d| path(&d)),
            ),
            None => (Vec::new(), None),
        };
        if default_path.is_none() {
            default_path = entry.route.filter(|r| !r.is_empty()).map(|r| path(&r));
        }
        if grpc && default_path.is_none() {
            // As daprd: no default route is the empty path, which the app's handler of
            // the topic answers.
            default_path = Some(String::new());
        }
        let raw_payload = entry.metadata.get("rawPayload").is_some_and(|v| match v {
            Value::Bool(b) => *b,
            Value::String(s) => truthy(s.trim_matches('"')).unwrap_or(false),
            Value::Number(n) => n.as_u64() == Some(1),
            _ => false,
        });
        let (mode, bulk) = match entry.bulk_subscribe {
            Some(b) if b.enabled => (
                DeliveryMode::Bulk,
                BulkSpec {
                    max_events: b.max_messages_count.unwrap_or(100).clamp(1, 10_000),
                    max_wait_ms: b.max_await_duration_ms.unwrap_or(1000).min(60_000),
                },
            ),
            _ => (DeliveryMode::Single, BulkSpec::default()),
        };
        let mut dead_letter_topic = entry.dead_letter_topic.filter(|t| !t.is_empty());
        if let Some(dead_letter) = &dead_letter_topic {
            let mapped = self
                .api
                .target(&entry.pubsubname, dead_letter)
                .map_err(|e| format!("deadLetterTopic `{dead_letter}`: {e}"))?;
            if let Some(why) = self.dead_letter_refusal(app, &topic, &mapped) {
                tracing::warn!(app = %app.id, topic = %entry.topic, dead_letter_topic = %dead_letter, %why, "deadLetterTopic refused: exhausted events stay in the subscription's DLQ");
                dead_letter_topic = None;
            }
        }
        let id = xxh3_64(format!("{}\u{0}{}", entry.pubsubname, entry.topic).as_bytes());
        Ok(SubscriptionSpec {
            name: format!("dapr-{}-{:012x}", app.id, id & 0xffff_ffff_ffff),
            topics: vec![topic],
            endpoints: vec![app.url.trim_end_matches('/').to_string()],
            mode,
            bulk,
            max_attempts: app.max_attempts,
            backoff: BackoffSpec {
                initial_ms: app.retry_initial_ms,
                ..BackoffSpec::default()
            },
            dapr: Some(DaprTarget {
                app_id: app.id.clone(),
                pubsubname: entry.pubsubname,
                topic: entry.topic,
                rules,
                default_path,
                raw_payload,
                dead_letter_topic,
                grpc,
            }),
            ..SubscriptionSpec::default()
        })
    }
}

fn leading_slash(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}
