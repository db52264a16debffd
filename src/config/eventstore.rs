//! The `[eventstore]` section: the PostgreSQL database every stored event is copied to, and
//! how long it keeps them.

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
        }
    }
}

impl EventStoreConfig {
    /// Problems with the section's values, by key.
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if let Some(url) = &self.url {
            if url.parse::<tokio_postgres::Config>().is_err()
                || !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
            {
                found.push((
                    "eventstore.url",
                    format!(
                        "`{}` is not a postgres:// URL",
                        crate::model::redact::url(url)
                    ),
                ));
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
