//! The event store: every stored event copied to PostgreSQL for a year of history.
//!
//! The copying is a subscription like the others ([`ARCHIVE`], on every topic, from the
//! earliest retained event), whose subscriber ([`archive::Archive`]) writes batches to
//! PostgreSQL instead of calling a webhook: several instances share the partitions by
//! lease, a dead one's partitions move, and Redis's retention never trims what it has not
//! acked. While PostgreSQL is away its lag grows and nothing else waits; the schema is
//! created and migrated ([`schema`]) as soon as PostgreSQL answers, and the daily
//! partitions are made ahead and dropped by age ([`partitions`]); an event is found by
//! its ids or its key through a bloom summary on the days being written and through
//! indexes built once a day has closed ([`lookups`]).

pub mod archive;
mod connect;
pub mod lookups;
pub mod outcomes;
pub mod partitions;
pub mod query;
pub mod replay;
pub mod restore;
pub mod rows;
pub mod schema;
pub mod sealing;
mod skim;
pub mod subjects;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;

use crate::config::EventStoreConfig;
use crate::model::subscription::{
    BackoffSpec, BulkSpec, DeliveryMode, Ordering as DeliveryOrdering, ReadSpec, Start,
    SubscriptionSpec,
};

/// The name of the archive subscription.
pub const ARCHIVE: &str = "eventstore-archive";

/// The archive subscription's endpoint: never called (its subscriber writes to
/// PostgreSQL), a name that cannot resolve (RFC 6761).
pub const ARCHIVE_ENDPOINT: &str = "http://eventstore.invalid/";

/// How often partitions are made ahead and dropped by age, and closed days indexed.
const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);

/// How often the page ranges filled since are summarized for lookups.
const SUMMARIZE_EVERY: Duration = Duration::from_secs(10);

/// Longest a batch's write may take before it is tried again.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Days of partitions made ahead of today.
const DAYS_AHEAD: u64 = 2;

/// What went wrong with the event store.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// PostgreSQL refused or failed a statement.
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had.
    #[error("postgresql connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The URL cannot be used.
    #[error("eventstore.url: {0}")]
    Config(String),
    /// The schema is not migrated yet (PostgreSQL has not answered since start).
    #[error("the event store's schema is not ready yet")]
    NotReady,
}

/// The event store's connections and state.
pub struct EventStore {
    pool: Pool,
    /// The subjects' keys (in their own database or this one).
    keys: sealing::Keys,
    /// Whether subjects' payloads are sealed as they are archived.
    seal: bool,
    subjects: subjects::Subjects,
    ready: AtomicBool,
    max_age: Duration,
}

impl EventStore {
    /// A pool of at most `config.connections` connections to `config.url`; nothing is
    /// connected yet.
    pub fn new(config: &EventStoreConfig) -> Result<Option<Arc<Self>>, EventStoreError> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let tls = connect::Tls::of(config)?;
        let pool = connect::pool_of(url, config.connections, &tls)?;
        // The subjects' keys have connections of their own, to their database or to the
        // store's: a query or an erasure holds one of the store's while it asks for keys,
        // which would wait for ever on a shared pool with one connection.
        let keys_url = config.keys_url.as_ref().unwrap_or(url);
        let keys = connect::pool_of(keys_url, config.connections.min(4), &tls)?;
        Ok(Some(Arc::new(Self {
            pool,
            keys: sealing::Keys::new(keys),
            seal: config.seal_subjects,
            subjects: subjects::Subjects::new(&config.subjects),
            ready: AtomicBool::new(false),
            max_age: config.max_age.get(),
        })))
    }

    /// A connection, once the schema is ready.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, EventStoreError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(EventStoreError::NotReady);
        }
        Ok(self.pool.get().await?)
    }

    /// Most connections open at once (`eventstore.connections`).
    pub fn connections(&self) -> usize {
        self.pool.status().max_size
    }

    /// Where each topic's data subject is found.
    pub fn subjects(&self) -> &subjects::Subjects {
        &self.subjects
    }

    /// The subjects' keys.
    pub fn keys(&self) -> &sealing::Keys {
        &self.keys
    }

    /// Whether subjects' payloads are sealed as they are archived.
    pub fn seals(&self) -> bool {
        self.seal
    }

    /// Whether the schema has been migrated since start.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Migrates the schema once PostgreSQL answers (trying again every 2 s), then makes
    /// and drops partitions every hour.
    pub fn spawn_upkeep(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.prepare().await {
                    Ok(version) => {
                        tracing::info!(version, "event store ready");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "event store not ready; trying again");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            // Closed days are indexed now (an upgraded store's, or those of days the
            // store was down), then hourly with the partitions.
            let mut maintained = tokio::time::Instant::now() - MAINTAIN_EVERY;
            loop {
                if maintained.elapsed() >= MAINTAIN_EVERY {
                    maintained = tokio::time::Instant::now();
                    if let Err(err) = self.maintain(SystemTime::now()).await {
                        tracing::warn!(error = %err, "event store partition upkeep failed");
                    }
                }
                if let Err(err) = self.summarize(SystemTime::now()).await {
                    tracing::warn!(error = %err, "event store summaries not brought up to date");
                }
                tokio::time::sleep(SUMMARIZE_EVERY).await;
            }
        })
    }

    /// Connects, migrates the schema and makes today's partitions; the schema version.
    pub async fn prepare(&self) -> Result<i32, EventStoreError> {
        let mut client = self.pool.get().await?;
        let version = schema::migrate(&mut client).await?;
        self.keys.prepare().await?;
        partitions::maintain(&client, SystemTime::now(), self.max_age, DAYS_AHEAD).await?;
        self.ready.store(true, Ordering::Release);
        Ok(version)
    }

    /// Makes the coming days' partitions, drops those older than the retention and builds
    /// the lookup indexes of the closed days, as of `now`; returns the days dropped.
    pub async fn maintain(&self, now: SystemTime) -> Result<Vec<partitions::Day>, EventStoreError> {
        let client = self.client().await?;
        let dropped = partitions::maintain(&client, now, self.max_age, DAYS_AHEAD).await?;
        lookups::index_closed_days(&client, now).await?;
        Ok(dropped)
    }

    /// Summarizes for lookups the page ranges of the open days filled since the last call;
    /// returns how many.
    pub async fn summarize(&self, now: SystemTime) -> Result<i64, EventStoreError> {
        let client = self.client().await?;
        lookups::summarize(&client, now).await
    }
}

/// The archive subscription of `config`: every topic from the earliest retained event, in
/// batches, unordered (rows are keyed by where they were stored, not by arrival), retried
/// without end and never dead-lettered.
pub fn archive_spec(config: &EventStoreConfig) -> SubscriptionSpec {
    SubscriptionSpec {
        name: ARCHIVE.into(),
        topics: vec![">".into()],
        endpoints: vec![ARCHIVE_ENDPOINT.into()],
        mode: DeliveryMode::Bulk,
        bulk: BulkSpec {
            max_events: config.batch,
            max_wait_ms: config.batch_wait.get().as_millis() as u64,
        },
        ordering: DeliveryOrdering::None,
        // Events read ahead: two batches per connection, so that a batch is ready to go
        // while one is written.
        max_in_flight: (config.batch * config.connections * 2).min(1_000_000),
        // A takeover after a crash waits this out: short, as a batch's COPY takes well
        // under a second.
        timeout_ms: WRITE_TIMEOUT.as_millis() as u64 + 5_000,
        max_attempts: u32::MAX,
        backoff: BackoffSpec {
            initial_ms: 500,
            max_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.2,
        },
        start: Start::Earliest,
        dead_letter: false,
        // Read at most every half batch wait: fewer, larger reads of the partitions.
        read: ReadSpec {
            linger_ms: Some((config.batch_wait.get().as_millis() as u64 / 2).min(1_000)),
        },
        ..SubscriptionSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::subscription::Subscription;

    #[test]
    fn the_archive_spec_passes_the_subscription_checks_at_every_setting() {
        for (batch, connections) in [(1, 1), (2000, 4), (10_000, 64)] {
            let config = EventStoreConfig {
                batch,
                connections,
                ..EventStoreConfig::default()
            };
            let spec = archive_spec(&config);
            assert_eq!(spec.read.linger_ms, Some(50), "half the batch wait");
            assert!(
                Subscription::new(spec.clone()).is_ok(),
                "{batch} × {connections}: {spec:?}"
            );
        }
    }
}
