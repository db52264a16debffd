//! Typed configuration: one TOML file, defaults for every key, `EVR_*` overrides, and a
//! validation pass that reports every problem with the key's path before anything starts.
//! The sections are here; `read` turns text into them, `validate` checks their values
//! (data only: nothing is started or compiled for use), durations are typed once in
//! `duration`.

mod dapr;
mod duration;
mod eventstore;
mod read;
mod security;
mod traces;
mod validate;

pub use dapr::{AppProtocol, DaprAppConfig, DaprConfig, DaprPubsubConfig};
pub use duration::ConfigDuration;
pub use eventstore::{EventStoreConfig, SubjectConfig};
pub use security::{
    AuditConfig, AuthConfig, AuthMode, JwtConfig, PrincipalConfig, TlsConfig, WebhooksConfig,
    DEFAULT_MAX_SUBSCRIPTIONS,
};
pub use traces::TracingConfig;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable holding the log filter; not a config override (nor are
/// `EVR_TEST_*` variables, which the test suite reads).
pub const LOG_ENV: &str = "EVR_LOG";

/// The environment variable choosing the log format (`json`); not a config override.
pub const LOG_FORMAT_ENV: &str = "EVR_LOG_FORMAT";

/// The environment variable holding the Redis password; not a config override either.
pub const REDIS_PASSWORD_ENV: &str = "EVR_REDIS_PASSWORD";

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
    /// Who may call evrouter and what each caller may do.
    pub auth: AuthConfig,
    /// The audit log of admin and subscription changes and refused requests.
    pub audit: AuditConfig,
    /// Where webhooks may be sent.
    pub webhooks: WebhooksConfig,
    /// Span export over OTLP/HTTP.
    pub tracing: TracingConfig,
    /// The PostgreSQL event store.
    pub eventstore: EventStoreConfig,
}

/// Delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// How long a partition lease lives without renewal; an instance that dies loses its
    /// partitions to the others within this time.
    pub lease_ttl: ConfigDuration,
    /// How long one read waits for new entries (Redis BLOCK).
    pub read_block: ConfigDuration,
    /// After a read that left nothing waiting (no partition gave all it was asked for),
    /// how long the reader waits before the next, so that each read carries more (0 reads
    /// again at once). A reader that is behind reads on without waiting.
    pub read_linger: ConfigDuration,
    /// Worker shards per subscription.
    pub shards: usize,
    /// Partition readers per subscription (each reads its share of the partitions over
    /// its own connection).
    pub readers: usize,
    /// Most subscriptions stored in all (every principal's, configured and Dapr apps'
    /// included); a create beyond it is refused with 409 `subscription_limit_total`.
    /// Each subscription runs readers with their own Redis connections on every instance
    /// (see docs/operations.md for what one costs); 0: no limit.
    pub max_subscriptions: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            lease_ttl: "5s".into(),
            read_block: "500ms".into(),
            read_linger: "5ms".into(),
            shards: 2,
            readers: 2,
            max_subscriptions: 1000,
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
    pub header_read_timeout: ConfigDuration,
    /// A request whose body has not fully arrived within this time gets 408.
    pub body_read_timeout: ConfigDuration,
    /// Most open client connections, of the HTTP and the Dapr gRPC listeners together;
    /// further ones wait to be accepted. Kept below the process's file-descriptor limit
    /// (a warning at start-up says when it is not).
    pub max_connections: usize,
    /// A publish that Redis has not confirmed within this time answers 503.
    pub publish_timeout: ConfigDuration,
    /// All of shutdown, from SIGTERM to exit: in-flight requests answered, partitions
    /// handed over, acks and writers flushed, leases released (under Kubernetes' default
    /// 30 s grace period).
    pub shutdown_budget: ConfigDuration,
    /// HTTPS: serve TLS with these files (`[server.tls]`); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
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
            max_connections: 4096,
            publish_timeout: "5s".into(),
            shutdown_budget: "25s".into(),
            tls: None,
        }
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Redis URL.
    pub url: String,
    /// With `rediss://`: a PEM file of the CA Redis's certificate chains to (default: the
    /// system's roots).
    pub tls_ca: Option<PathBuf>,
    /// With `rediss://`: a PEM client certificate, for a Redis that requires one.
    pub tls_client_cert: Option<PathBuf>,
    /// With `rediss://`: the client certificate's PEM private key.
    pub tls_client_key: Option<PathBuf>,
    /// A file holding the Redis password (its first line), used instead of one in `url`;
    /// the variable `EVR_REDIS_PASSWORD`, when set, is used before both.
    pub password_file: Option<PathBuf>,
    /// Prefix of every key evrouter writes.
    pub key_prefix: String,
    /// A single Redis command or pipeline not answered within this time fails.
    pub response_timeout: ConfigDuration,
    /// Connecting to Redis gives up after this time.
    pub connect_timeout: ConfigDuration,
    /// `warn`: log when Redis could lose acknowledged events on a crash; `strict`: refuse
    /// to start then; `off`: do not check.
    pub durability: Durability,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            password_file: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
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
    pub linger: ConfigDuration,
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
    /// How often the trimmer recomputes each partition's safe trim floor and size.
    pub check_interval: ConfigDuration,
    /// The share of Redis's `maxmemory` all streams together may use (0 to 1; 0: no such
    /// bound). Beyond it, acknowledged history is trimmed first, then each stream's
    /// `when_full` applies.
    pub memory_share: f64,
    /// Most entries in one dead-letter stream (a subscription's, per partition).
    pub dlq_max_len: u64,
    /// What a full dead-letter stream does: `block` (the dead letter is refused and the
    /// event stays pending) or `drop_oldest` (the oldest dead letters are dropped, and
    /// logged).
    pub dlq_when_full: WhenFull,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            check_interval: "5s".into(),
            memory_share: 0.7,
            dlq_max_len: 100_000,
            dlq_when_full: WhenFull::Block,
        }
    }
}

/// What a stream at one of its bounds does with what its subscriptions have not acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new entries (publishes answer 507 `store_full`): nothing acknowledged is
    /// lost.
    Block,
    /// Move the oldest entries a subscription has not acked to its dead-letter stream
    /// (reason `retention`), then trim them.
    DropOldest,
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
    pub max_age: ConfigDuration,
    /// Approximate most entries per partition.
    pub max_len: Option<u64>,
    /// Most bytes the stream may take in Redis (all partitions), e.g. `"2GiB"`; none: only
    /// the shared `retention.memory_share` bounds it.
    pub max_bytes: Option<bytesize::ByteSize>,
    /// What the stream does at `max_bytes`, `max_len` or the shared memory bound when its
    /// subscriptions have not acked the oldest entries: `block` or `drop_oldest`.
    pub when_full: WhenFull,
    /// Publishing an `event_id` again within this window appends nothing; off when unset.
    pub dedup_window: Option<ConfigDuration>,
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
            max_bytes: None,
            when_full: WhenFull::Block,
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
}

#[cfg(test)]
mod example_tests;
#[cfg(test)]
mod tests;
