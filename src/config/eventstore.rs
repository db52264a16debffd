//! The `[eventstore]` section: the PostgreSQL database every stored event is copied to, and
//! how long it keeps them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// The event store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventStoreConfig {
    /// `postgres://user:password@host:5432/db`; none: no event store. Never logged with
    /// its password.
    pub url: Option<String>,
    /// How long events are kept (whole days are dropped once older).
    pub max_age: ConfigDuration,
    /// Most events written in one `COPY`.
    pub batch: usize,
    /// Longest wait for a batch to fill.
    pub batch_wait: ConfigDuration,
    /// Batches written at once per instance (and PostgreSQL connections).
    pub connections: usize,
    /// The share of delivered events whose outcome is recorded (0 to 1); failures,
    /// retries, dead letters and drops always are.
    pub outcomes_sample: f64,
    /// Where the data subject (a customer) of an event is found, for export and erasure:
    /// JSON pointers into the events of some topics.
    pub subjects: Vec<SubjectConfig>,
    /// Whether the payload of an event about a data subject is stored sealed under keys
    /// of its subjects, so that erasing a subject's key erases every copy (backups too).
    pub seal_subjects: bool,
    /// The database of the subjects' keys; none: the event store's own. A database of
    /// its own, backed up on a short cycle, is what makes an erasure reach old backups.
    pub keys_url: Option<String>,
    /// PEM file of the CA PostgreSQL's certificate chains to (TLS is used when it is set
    /// or the URL says `sslmode=require`); none: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate, for a PostgreSQL that asks for one (with `tls_client_key`).
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's key.
    pub tls_client_key: Option<PathBuf>,
}

/// The data subject of some topics' events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectConfig {
    /// Topic patterns (`order.>`).
    pub topics: Vec<String>,
    /// JSON pointers to the subject's id in the event as stored (`/data/customer_id`).
    pub pointers: Vec<String>,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_age: ConfigDuration::new("365d"),
            batch: 2000,
            batch_wait: ConfigDuration::new("100ms"),
            connections: 4,
            outcomes_sample: 1.0,
            subjects: Vec::new(),
            seal_subjects: true,
            keys_url: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
        }
    }
}

impl EventStoreConfig {
    /// Problems with the section's values, by key.
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        for (key, url) in [
            ("eventstore.url", &self.url),
            ("eventstore.keys_url", &self.keys_url),
        ] {
            if let Some(url) = url {
                if url.parse::<tokio_postgres::Config>().is_err()
                    || !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
                {
                    found.push((
                        key,
                        format!(
                            "`{}` is not a postgres:// URL",
                            crate::model::redact::url(url)
                        ),
                    ));
                }
            }
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            found.push((
                "eventstore.tls_client_cert",
                "tls_client_cert and tls_client_key go together".into(),
            ));
        }
        for (key, path) in [
            ("eventstore.tls_ca", &self.tls_ca),
            ("eventstore.tls_client_cert", &self.tls_client_cert),
            ("eventstore.tls_client_key", &self.tls_client_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    found.push((key, format!("`{}` is not a readable file", path.display())));
                }
            }
        }
        if !(1..=10_000).contains(&self.batch) {
            found.push(("eventstore.batch", "must be from 1 to 10000".into()));
        }
        if !(1..=64).contains(&self.connections) {
            found.push(("eventstore.connections", "must be from 1 to 64".into()));
        }
        if !(0.0..=1.0).contains(&self.outcomes_sample) {
            found.push((
                "eventstore.outcomes_sample",
                format!("must be from 0 to 1, not {}", self.outcomes_sample),
            ));
        }
        for (i, subject) in self.subjects.iter().enumerate() {
            if subject.topics.is_empty() {
                found.push((
                    "eventstore.subjects",
                    format!("[{i}].topics: at least one topic pattern"),
                ));
            }
            for topic in &subject.topics {
                if let Err(e) = crate::model::pattern::TopicPattern::parse(topic) {
                    found.push((
                        "eventstore.subjects",
                        format!("[{i}].topics: `{topic}`: {e}"),
                    ));
                }
            }
            if subject.pointers.is_empty() || subject.pointers.iter().any(|p| !p.starts_with('/')) {
                found.push((
                    "eventstore.subjects",
                    format!("[{i}].pointers: JSON pointers, each starting with `/`"),
                ));
            }
        }
        if self.max_age.get() < std::time::Duration::from_secs(86_400) {
            found.push(("eventstore.max_age", "must be at least 1d".into()));
        }
        found
    }
}
