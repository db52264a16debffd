//! Typed configuration: one TOML file, defaults for every key, `EVR_*` overrides, and a
//! validation pass that reports every problem with the key's path before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::pattern::TopicPattern;

/// The environment variable holding the log filter; not a config override (nor are
/// `EVR_TEST_*` variables, which the test suite reads).
pub const LOG_ENV: &str = "EVR_LOG";

/// Everything evrouter can be told, read once at start-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// HTTP listener and request limits.
    pub server: ServerConfig,
    /// Redis connection and durability policy.
    pub redis: RedisConfig,
    /// Batched, pipelined partition writers.
    pub writer: WriterConfig,
    /// Event validation: base schema patterns and per-type schemas.
    pub validation: ValidationConfig,
    /// Retention enforcement (trimming) of the partitions.
    pub retention: RetentionConfig,
    /// When true (default), the platform's domain streams are defined unless a stream of
    /// the same name is configured.
    pub default_streams: DefaultStreams,
    /// Streams: which topics they hold, partitions, key rules, retention, dedup.
    pub streams: Vec<StreamConfig>,
    /// Delivery: leases, reads and worker shards.
    pub delivery: DeliveryConfig,
    /// Subscriptions stored at start-up (`[[subscriptions]]`), as `POST /v1/subscriptions`
    /// takes them.
    pub subscriptions: Vec<crate::model::subscription::SubscriptionSpec>,
    /// The Dapr-compatible API: pubsub names, apps whose subscriptions are read.
    pub dapr: DaprConfig,
}

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
    pub refresh_interval: String,
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
}

impl Default for DaprAppConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            url: String::new(),
            max_attempts: 5,
            retry_initial_ms: 100,
        }
    }
}

/// Delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// How long a partition lease lives without renewal; an instance that dies loses its
    /// partitions to the others within this time.
    pub lease_ttl: String,
    /// How long one read waits for new entries (Redis BLOCK).
    pub read_block: String,
    /// After a read that brought few entries, how long the reader waits before the next,
    /// so that under load each read carries more (0 reads again at once).
    pub read_linger: String,
    /// Worker shards per subscription.
    pub shards: usize,
    /// Partition readers per subscription (each reads its share of the partitions over
    /// its own connection).
    pub readers: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            lease_ttl: "5s".into(),
            read_block: "500ms".into(),
            read_linger: "2ms".into(),
            shards: 2,
            readers: 2,
        }
    }
}

/// Whether the built-in domain streams are added (a newtype so its default is `true`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DefaultStreams(pub bool);

impl Default for DefaultStreams {
    fn default() -> Self {
        Self(true)
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on (Dapr's HTTP port by default).
    pub listen: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most events accepted in one batch publish.
    pub max_batch: usize,
    /// Deepest JSON nesting accepted in a body.
    pub max_json_depth: usize,
    /// A connection that has not sent a full request head within this time is dropped.
    pub header_read_timeout: String,
    /// A request whose body has not fully arrived within this time gets 408.
    pub body_read_timeout: String,
    /// Most open client connections; further ones wait to be accepted.
    pub max_connections: usize,
    /// A publish that Redis has not confirmed within this time answers 503.
    pub publish_timeout: String,
    /// How long shutdown waits for in-flight requests before cutting them off.
    pub shutdown_grace: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3500".into(),
            max_body_bytes: 1 << 20,
            max_batch: 1000,
            max_json_depth: 64,
            header_read_timeout: "10s".into(),
            body_read_timeout: "30s".into(),
            max_connections: 10_000,
            publish_timeout: "5s".into(),
            shutdown_grace: "30s".into(),
        }
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Redis URL.
    pub url: String,
    /// Prefix of every key evrouter writes.
    pub key_prefix: String,
    /// A single Redis command or pipeline not answered within this time fails.
    pub response_timeout: String,
    /// Connecting to Redis gives up after this time.
    pub connect_timeout: String,
    /// `warn`: log when Redis could lose acknowledged events on a crash; `strict`: refuse
    /// to start then; `off`: do not check.
    pub durability: Durability,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "evr".into(),
            response_timeout: "2s".into(),
            connect_timeout: "1s".into(),
            durability: Durability::Warn,
        }
    }
}

/// What to do when Redis's persistence settings could lose acknowledged events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Do not check.
    Off,
    /// Log a warning.
    Warn,
    /// Refuse to start.
    Strict,
}

/// Partition writer settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WriterConfig {
    /// Number of writers; each owns a share of the partitions and one Redis connection.
    pub writers: usize,
    /// Most entries sent in one pipeline.
    pub max_batch: usize,
    /// How long a writer waits for more entries before sending a batch that is not full.
    /// `0s` (default) sends at once: batches still form while the previous pipeline is in
    /// flight. Non-zero values have millisecond resolution.
    pub linger: String,
    /// Most publish requests queued per writer; beyond it publishers get 503.
    pub queue_capacity: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            writers: 2,
            max_batch: 512,
            linger: "0s".into(),
            queue_capacity: 4096,
        }
    }
}

/// Validation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationConfig {
    /// Pattern `event_id` must match.
    pub event_id_pattern: String,
    /// Pattern `event_type` must match. The platform's own documented pattern
    /// (`^[a-z]+\.[a-z]+\.[a-z]+$`) rejects its own examples such as `order.created`, so the
    /// default accepts two or three segments.
    pub event_type_pattern: String,
    /// Folder of per-type schemas: `{event_type}.json` and `{event_type}.v{major}.json`.
    pub schema_dir: Option<PathBuf>,
    /// When true, every topic requires `event_type == topic` (streams may override).
    pub require_type_match: bool,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            event_id_pattern: "^evt_[a-z]+_[0-9]+$".into(),
            event_type_pattern: r"^[a-z]+(\.[a-z]+){1,2}$".into(),
            schema_dir: None,
            require_type_match: false,
        }
    }
}

/// Retention enforcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// How often the trimmer recomputes each partition's safe trim floor.
    pub check_interval: String,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            check_interval: "30s".into(),
        }
    }
}

/// One stream: a partitioned log holding the topics its patterns match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StreamConfig {
    /// Stream name; also the first part of its partitions' Redis keys.
    pub name: String,
    /// Topic patterns (`order.*`, `order.>`, `re:^order\..*$`); default `{name}.>`.
    pub topics: Vec<String>,
    /// Number of partitions.
    pub partitions: u32,
    /// Key rules, first matching topic wins: a JSON pointer into the event.
    pub keys: Vec<KeyRuleConfig>,
    /// Entries older than this are trimmed (never while a group has not acked them).
    pub max_age: String,
    /// Approximate most entries per partition (never trimming what a group has not acked).
    pub max_len: Option<u64>,
    /// Publishing an `event_id` again within this window appends nothing; off when unset.
    pub dedup_window: Option<String>,
    /// Overrides `validation.require_type_match` for this stream's topics.
    pub require_type_match: Option<bool>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            topics: Vec::new(),
            partitions: 16,
            keys: Vec::new(),
            max_age: "30d".into(),
            max_len: None,
            dedup_window: None,
            require_type_match: None,
        }
    }
}

/// Where to find an event's key for the topics matching `topic`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRuleConfig {
    /// Topic pattern the rule applies to.
    pub topic: String,
    /// JSON pointer into the event, e.g. `/data/order_id`.
    pub pointer: String,
}

/// The platform's domains and the field that names each one's entity.
const DOMAIN_KEYS: &[(&str, &str)] = &[
    ("order", "/data/order_id"),
    ("inventory", "/data/product_id"),
    ("payment", "/data/order_id"),
    ("customer", "/data/customer_id"),
    ("catalog", "/data/product_id"),
    ("search", "/data/query_id"),
    ("service", "/data/service"),
    ("analytics", "/data/report_id"),
    ("fulfillment", "/data/order_id"),
    ("shipping", "/data/order_id"),
    ("notification", "/data/customer_id"),
    ("loyalty", "/data/customer_id"),
];

/// The built-in streams for the platform's domains.
pub fn default_domain_streams() -> Vec<StreamConfig> {
    DOMAIN_KEYS
        .iter()
        .map(|(domain, pointer)| StreamConfig {
            name: (*domain).to_string(),
            topics: vec![format!("{domain}.>")],
            keys: vec![KeyRuleConfig {
                topic: format!("{domain}.>"),
                pointer: (*pointer).to_string(),
            }],
            ..StreamConfig::default()
        })
        .collect()
}

/// One problem found in a configuration, with the path of the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `streams[0].partitions`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file is not valid TOML: {0}")]
    Syntax(String),
    /// One or more keys are unknown or hold bad values.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Reads `path` (or nothing), applies `EVR_*` variables from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_str(&text, env)
    }

    /// Parses TOML text, applies `EVR_*` overrides, and validates everything.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let mut problems = Vec::new();
        for (name, value) in env {
            if name == LOG_ENV || name.starts_with("EVR_TEST_") {
                continue;
            }
            if let Some(rest) = name.strip_prefix("EVR_") {
                apply_env_override(&mut table, rest, &value, &mut problems);
            }
        }
        // Each section (and each stream) is read on its own, so that a wrong type in one
        // does not hide the problems of the others.
        let mut config = Config::default();
        let mut streams_ok = true;
        for (key, value) in table {
            match key.as_str() {
                "server" => {
                    read_section(&key, value, &mut problems, &mut config.server);
                }
                "redis" => {
                    read_section(&key, value, &mut problems, &mut config.redis);
                }
                "writer" => {
                    read_section(&key, value, &mut problems, &mut config.writer);
                }
                "validation" => {
                    read_section(&key, value, &mut problems, &mut config.validation);
                }
                "retention" => {
                    read_section(&key, value, &mut problems, &mut config.retention);
                }
                "delivery" => {
                    read_section(&key, value, &mut problems, &mut config.delivery);
                }
                "subscriptions" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let mut sub = Default::default();
                            if read_section(
                                &format!("subscriptions[{i}]"),
                                item,
                                &mut problems,
                                &mut sub,
                            ) {
                                config.subscriptions.push(sub);
                            }
                        }
                    }
                    _ => problems.push(ConfigProblem {
                        path: key,
                        message: "must be an array of tables ([[subscriptions]])".into(),
                    }),
                },
                "dapr" => {
                    read_section(&key, value, &mut problems, &mut config.dapr);
                }
                "default_streams" => {
                    read_section(&key, value, &mut problems, &mut config.default_streams);
                }
                "streams" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let mut stream = StreamConfig::default();
                            streams_ok &= read_section(
                                &format!("streams[{i}]"),
                                item,
                                &mut problems,
                                &mut stream,
                            );
                            config.streams.push(stream);
                        }
                    }
                    _ => {
                        streams_ok = false;
                        problems.push(ConfigProblem {
                            path: key,
                            message: "must be an array of tables ([[streams]])".into(),
                        });
                    }
                },
                _ => problems.push(ConfigProblem {
                    path: key,
                    message: "unknown key".into(),
                }),
            }
        }
        config.validate(&mut problems, streams_ok);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The configured streams, plus the built-in domain streams not overridden by name.
    pub fn effective_streams(&self) -> Vec<StreamConfig> {
        let mut streams = self.streams.clone();
        for stream in &mut streams {
            if stream.topics.is_empty() {
                stream.topics = vec![format!("{}.>", stream.name)];
            }
        }
        if self.default_streams.0 {
            for builtin in default_domain_streams() {
                match streams.iter_mut().find(|s| s.name == builtin.name) {
                    // A configured stream replaces the built-in one but keeps its key rule
                    // unless it names its own.
                    Some(stream) if stream.keys.is_empty() => stream.keys = builtin.keys,
                    Some(_) => {}
                    None => streams.push(builtin),
                }
            }
        }
        streams
    }

    fn validate(&self, problems: &mut Vec<ConfigProblem>, check_streams: bool) {
        let mut bad = |path: &str, message: String| {
            problems.push(ConfigProblem {
                path: path.to_string(),
                message,
            })
        };
        if self.server.listen.parse::<SocketAddr>().is_err() {
            bad(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:3500",
                    self.server.listen
                ),
            );
        }
        for (path, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("server.max_batch", self.server.max_batch),
            ("server.max_json_depth", self.server.max_json_depth),
            ("server.max_connections", self.server.max_connections),
            ("writer.writers", self.writer.writers),
            ("writer.max_batch", self.writer.max_batch),
            ("writer.queue_capacity", self.writer.queue_capacity),
            ("delivery.shards", self.delivery.shards),
            ("delivery.readers", self.delivery.readers),
        ] {
            if value == 0 {
                bad(path, "must be greater than 0".into());
            }
        }
        for (path, value) in [
            (
                "server.header_read_timeout",
                &self.server.header_read_timeout,
            ),
            ("server.publish_timeout", &self.server.publish_timeout),
            ("server.shutdown_grace", &self.server.shutdown_grace),
            ("redis.response_timeout", &self.redis.response_timeout),
            ("redis.connect_timeout", &self.redis.connect_timeout),
            ("writer.linger", &self.writer.linger),
            ("retention.check_interval", &self.retention.check_interval),
            ("delivery.lease_ttl", &self.delivery.lease_ttl),
            ("delivery.read_block", &self.delivery.read_block),
            ("delivery.read_linger", &self.delivery.read_linger),
        ] {
            match parse_duration(value) {
                Ok(d)
                    if d.is_zero() && path != "writer.linger" && path != "delivery.read_linger" =>
                {
                    bad(path, "must be greater than 0".into())
                }
                Ok(_) => {}
                Err(message) => bad(path, message),
            }
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            bad(
                "redis.url",
                format!("`{}` is not a redis:// URL", self.redis.url),
            );
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            bad(
                "redis.key_prefix",
                "must be non-empty and hold no braces".into(),
            );
        }
        for (path, pattern) in [
            (
                "validation.event_id_pattern",
                &self.validation.event_id_pattern,
            ),
            (
                "validation.event_type_pattern",
                &self.validation.event_type_pattern,
            ),
        ] {
            if let Err(e) = regex::Regex::new(pattern) {
                bad(path, format!("not a regular expression: {e}"));
            }
        }
        if let Some(dir) = &self.validation.schema_dir {
            if !dir.is_dir() {
                bad(
                    "validation.schema_dir",
                    format!("{} is not a directory", dir.display()),
                );
            }
        }
        for (path, value, floor) in [
            (
                "delivery.lease_ttl",
                &self.delivery.lease_ttl,
                Duration::from_millis(100),
            ),
            (
                "delivery.read_block",
                &self.delivery.read_block,
                Duration::from_millis(1),
            ),
        ] {
            if parse_duration(value).is_ok_and(|d| !d.is_zero() && d < floor) {
                bad(path, format!("must be at least {floor:?}"));
            }
        }
        self.validate_dapr(&mut bad);
        let mut subscription_names = std::collections::HashSet::new();
        for (i, spec) in self.subscriptions.iter().enumerate() {
            if !subscription_names.insert(spec.name.as_str()) {
                bad(
                    &format!("subscriptions[{i}].name"),
                    format!("duplicate subscription `{}`", spec.name),
                );
            }
            if let Err(violations) = spec.check() {
                for v in violations {
                    let key = v.path.trim_start_matches('/').replace('/', ".");
                    bad(&format!("subscriptions[{i}].{key}"), v.message);
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let streams = if check_streams {
            &self.streams[..]
        } else {
            &[]
        };
        for (i, stream) in streams.iter().enumerate() {
            let at = |key: &str| format!("streams[{i}].{key}");
            if !crate::model::topic::is_valid_segment(&stream.name) {
                bad(
                    &at("name"),
                    format!(
                        "`{}` must be lowercase letters, digits, `_` or `-`",
                        stream.name
                    ),
                );
            }
            if !names.insert(stream.name.as_str()) {
                bad(&at("name"), format!("duplicate stream `{}`", stream.name));
            }
            if stream.partitions == 0 || stream.partitions > 4096 {
                bad(&at("partitions"), "must be between 1 and 4096".into());
            }
            for (j, topic) in stream.topics.iter().enumerate() {
                if let Err(e) = TopicPattern::parse(topic) {
                    bad(&at(&format!("topics[{j}]")), e.to_string());
                }
            }
            for (j, rule) in stream.keys.iter().enumerate() {
                if let Err(e) = TopicPattern::parse(&rule.topic) {
                    bad(&at(&format!("keys[{j}].topic")), e.to_string());
                }
                if !rule.pointer.starts_with('/') || rule.pointer.len() < 2 {
                    bad(
                        &at(&format!("keys[{j}].pointer")),
                        format!(
                            "`{}` is not a JSON pointer like /data/order_id",
                            rule.pointer
                        ),
                    );
                }
            }
            match parse_duration(&stream.max_age) {
                Ok(d) if d.is_zero() => bad(&at("max_age"), "must be greater than 0".into()),
                Ok(_) => {}
                Err(message) => bad(&at("max_age"), message),
            }
            if stream.max_len == Some(0) {
                bad(&at("max_len"), "must be greater than 0".into());
            }
            if let Some(window) = &stream.dedup_window {
                match parse_duration(window) {
                    Ok(d) if d.as_millis() == 0 => bad(&at("dedup_window"), "must be > 0".into()),
                    Ok(_) => {}
                    Err(message) => bad(&at("dedup_window"), message),
                }
            }
        }
    }

    fn validate_dapr(&self, bad: &mut impl FnMut(&str, String)) {
        let dapr = &self.dapr;
        let mut names = std::collections::HashSet::new();
        for (i, pubsub) in dapr.pubsubs.iter().enumerate() {
            let at = |key: &str| format!("dapr.pubsubs[{i}].{key}");
            if pubsub.name.is_empty() || pubsub.name.contains('/') {
                bad(&at("name"), "must be a non-empty name without `/`".into());
            }
            if !names.insert(pubsub.name.as_str()) {
                bad(&at("name"), format!("duplicate pubsub `{}`", pubsub.name));
            }
            let prefix = &pubsub.topic_prefix;
            let prefix_ok = prefix.is_empty()
                || (prefix.ends_with('.')
                    && prefix
                        .trim_end_matches('.')
                        .split('.')
                        .all(crate::model::topic::is_valid_segment));
            if !prefix_ok {
                bad(
                    &at("topic_prefix"),
                    format!("`{prefix}` must be topic segments ending in `.`, like `billing.`"),
                );
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, app) in dapr.apps.iter().enumerate() {
            let at = |key: &str| format!("dapr.apps[{i}].{key}");
            if !crate::model::topic::is_valid_segment(&app.id) {
                bad(
                    &at("id"),
                    format!("`{}` must be lowercase letters, digits, `_` or `-`", app.id),
                );
            }
            if !ids.insert(app.id.as_str()) {
                bad(&at("id"), format!("duplicate app `{}`", app.id));
            }
            let ok = app
                .url
                .parse::<hyper::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                bad(&at("url"), format!("`{}` is not an http:// URL", app.url));
            }
            if app.max_attempts == 0 {
                bad(&at("max_attempts"), "must be at least 1".into());
            }
            if app.retry_initial_ms == 0 || app.retry_initial_ms > 60_000 {
                bad(
                    &at("retry_initial_ms"),
                    "must be between 1 and 60000".into(),
                );
            }
        }
        if let Some(dir) = &dapr.subscriptions_dir {
            if !dir.is_dir() {
                bad(
                    "dapr.subscriptions_dir",
                    format!("{} is not a directory", dir.display()),
                );
            }
        }
        match parse_duration(&dapr.refresh_interval) {
            Ok(d) if d < Duration::from_millis(100) => {
                bad("dapr.refresh_interval", "must be at least 100ms".into())
            }
            Ok(_) => {}
            Err(message) => bad("dapr.refresh_interval", message),
        }
    }

    /// Parses a duration key that validation has already accepted.
    pub fn duration(value: &str) -> Duration {
        parse_duration(value).unwrap_or_default()
    }
}

/// Deserializes one section into `target`, recording unknown keys and a type error with
/// their full paths; `target` keeps its defaults when the section has a type error.
/// Returns whether the section's types were right.
fn read_section<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: toml::Value,
    problems: &mut Vec<ConfigProblem>,
    target: &mut T,
) -> bool {
    let join = |inner: &str| {
        if inner.is_empty() || inner == "." {
            prefix.to_string()
        } else if inner.starts_with('[') {
            format!("{prefix}{inner}")
        } else {
            format!("{prefix}.{inner}")
        }
    };
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
    let parsed: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut on_unknown));
    for path in unknown {
        problems.push(ConfigProblem {
            path: join(&path),
            message: "unknown key".into(),
        });
    }
    match parsed {
        Ok(value) => {
            *target = value;
            true
        }
        Err(err) => {
            problems.push(ConfigProblem {
                path: join(&err.path().to_string()),
                message: err.inner().to_string(),
            });
            false
        }
    }
}

/// Writes a key path as the rest of the messages do: `streams[0].colour`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Parses `"200us"`, `"5s"`, `"30d"` and the like.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("`{value}` is not a duration like 5s, 200ms or 30d: {e}"))
}

/// Sets `EVR_SECTION__KEY=value` into the table as `section.key`; the value is read as a
/// TOML value when it parses as one (numbers, booleans, arrays), else as a string.
fn apply_env_override(
    table: &mut toml::Table,
    name: &str,
    raw: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    let parts: Vec<String> = name.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        problems.push(ConfigProblem {
            path: format!("EVR_{name}"),
            message: "environment override must look like EVR_SECTION__KEY".into(),
        });
        return;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut current = table;
    for part in &parts[..parts.len() - 1] {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => current = t,
            _ => {
                problems.push(ConfigProblem {
                    path: parts.join("."),
                    message: format!("EVR_{name} overrides a key that is not a section"),
                });
                return;
            }
        }
    }
    if let Some(last) = parts.last() {
        current.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::from_toml_str("", no_env()).expect("defaults are valid");
        assert_eq!(config.server.listen, "127.0.0.1:3500");
        assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
        assert!(config.effective_streams().iter().any(|s| s.name == "order"));
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_listed_with_its_path() {
        let text = r#"
            [server]
            listn = "x"
            max_batch = 0
            [writer]
            flavour = 1
            [[streams]]
            name = "Order"
            partitions = 0
            max_age = "forever"
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
            panic!("config should be refused");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "server.listn",
            "writer.flavour",
            "server.max_batch",
            "streams[0].name",
            "streams[0].partitions",
            "streams[0].max_age",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn wrong_type_names_its_key() {
        let Err(ConfigError::Invalid(problems)) =
            Config::from_toml_str("[server]\nmax_batch = \"many\"\n", no_env())
        else {
            panic!("config should be refused");
        };
        assert_eq!(problems[0].path, "server.max_batch");
    }

    #[test]
    fn type_errors_in_several_sections_are_all_reported() {
        let text = "[server]\nmax_batch = \"many\"\n[writer]\nwriters = \"two\"\n[retention]\ncheck_interval = \"0s\"\n[[streams]]\nname = \"a\"\npartitions = \"x\"\n";
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
            panic!("config should be refused");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "server.max_batch",
            "writer.writers",
            "retention.check_interval",
            "streams[0].partitions",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn bad_delivery_settings_are_reported_with_their_paths() {
        let text = "[delivery]\nreaders = 0\nread_linger = \"soon\"\n\n[[subscriptions]]\nname = \"s\"\ntopics = [\"order.*\"]\nendpoints = [\"http://127.0.0.1:1/e\"]\nordering = \"sequence\"\nreorder = { timeout_ms = 0, max_held = 0 }\n";
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
            panic!("config should be refused");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "delivery.readers",
            "delivery.read_linger",
            "subscriptions[0].reorder.timeout_ms",
            "subscriptions[0].reorder.max_held",
        ] {
            assert!(
                paths.iter().any(|p| p.starts_with(expected)),
                "{expected} missing from {paths:?}"
            );
        }
        let fine = "[delivery]\nread_linger = \"0s\"\n";
        assert!(
            Config::from_toml_str(fine, no_env()).is_ok(),
            "0s disables the pause"
        );
    }

    #[test]
    fn bad_subscriptions_in_config_are_reported_with_their_paths() {
        let text = "[[subscriptions]]\nname = \"ok\"\ntopics = [\"order.*\"]\nendpoints = [\"http://127.0.0.1:1/e\"]\n\n[[subscriptions]]\nname = \"ok\"\ntopics = [\"a..b\"]\nendpoints = [\"ftp://x\"]\n\n[[subscriptions]]\nname = \"x\"\ncolour = 1\n";
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
            panic!("config should be refused");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "subscriptions[1].name",
            "subscriptions[1].topics.0",
            "subscriptions[1].endpoints.0",
            "subscriptions[2]",
        ] {
            assert!(
                paths.iter().any(|p| p.starts_with(expected)),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn bad_dapr_settings_are_reported_with_their_paths() {
        let text = "[dapr]\nrefresh_interval = \"1ms\"\nsubscriptions_dir = \"/no/such/dir\"\ncolour = 1\n\n[[dapr.pubsubs]]\nname = \"pubsub\"\ntopic_prefix = \"Bad\"\n\n[[dapr.pubsubs]]\nname = \"pubsub\"\n\n[[dapr.apps]]\nid = \"Shop App\"\nurl = \"ftp://x\"\nmax_attempts = 0\nretry_initial_ms = 0\ncolour = 2\n";
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
            panic!("config should be refused");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "dapr.colour",
            "dapr.refresh_interval",
            "dapr.subscriptions_dir",
            "dapr.pubsubs[0].topic_prefix",
            "dapr.pubsubs[1].name",
            "dapr.apps[0].id",
            "dapr.apps[0].url",
            "dapr.apps[0].max_attempts",
            "dapr.apps[0].retry_initial_ms",
            "dapr.apps[0].colour",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        let good = "[[dapr.pubsubs]]\nname = \"billing\"\ntopic_prefix = \"billing.\"\n\n[[dapr.apps]]\nid = \"shop\"\nurl = \"http://127.0.0.1:8081\"\n";
        let config = Config::from_toml_str(good, no_env()).expect("valid");
        assert_eq!(
            config.dapr.pubsubs.len(),
            1,
            "blocks replace the default pubsub"
        );
        assert_eq!(config.dapr.apps[0].max_attempts, 5);
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            (
                "EVR_REDIS__URL".to_string(),
                "redis://10.0.0.1:7000".to_string(),
            ),
            ("EVR_SERVER__MAX_BATCH".to_string(), "50".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
            ("EVR_LOG".to_string(), "debug".to_string()),
        ];
        let config = Config::from_toml_str("[server]\nmax_batch = 10\n", env).expect("valid");
        assert_eq!(config.redis.url, "redis://10.0.0.1:7000");
        assert_eq!(config.server.max_batch, 50);
    }

    #[test]
    fn configured_stream_replaces_builtin_of_same_name() {
        let text = "[[streams]]\nname = \"order\"\npartitions = 4\n";
        let config = Config::from_toml_str(text, no_env()).expect("valid");
        let streams = config.effective_streams();
        let orders: Vec<_> = streams.iter().filter(|s| s.name == "order").collect();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].partitions, 4);
        assert_eq!(orders[0].topics, vec!["order.>".to_string()]);
        assert_eq!(
            orders[0].keys[0].pointer, "/data/order_id",
            "built-in key rule kept"
        );
    }
}
