//! The delivery runtime: subscriptions, partition ownership, and one worker per
//! subscription (partition readers, worker shards with per-key lanes, and a batched acker);
//! DLQ listing and redrive. How a subscriber is called is behind [`transport`].
//!
//! A control task keeps it all in step: it refreshes the subscriptions from Redis, starts
//! and stops workers, tells each worker which partitions its subscription reads, and keeps
//! this instance's leases.

mod control;
mod dispatch;
mod drain;
pub mod handoff;
pub mod lanes;
mod observed;
pub mod outcomes;
pub mod redrive;
pub mod registry;
pub mod reorder;
pub mod resend;
pub mod rewind;
pub mod shard;
mod sink;
pub mod stats;
pub mod subscription;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::catalog::StreamCatalog;
use crate::model::subscription::{Ordering, Start};
use crate::model::sync::lock;
use crate::store::dlq::{self, Page};
use crate::store::groups::{bury, destroy_group, ensure_group, lag, unbury, Lag};
use crate::store::lease::{LeaseKeeper, LeaseSettings, Owned};
use crate::store::{RedisTarget, StoreError};
use handoff::Handoffs;
pub use observed::Observed;
use redrive::RedriveReport;
use registry::Registry;
use stats::SubscriptionStats;
use subscription::Subscription;
use transport::Connector;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This instance's id and consumer name.
    pub instance: String,
    /// Key prefix.
    pub prefix: String,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// BLOCK of each read.
    pub read_block: Duration,
    /// Pause after a read that brought few entries.
    pub read_linger: Duration,
    /// Worker shards per subscription.
    pub shards: usize,
    /// Partition readers per subscription.
    pub readers: usize,
    /// Most subscriptions in all that the API may create (0: no limit).
    pub max_subscriptions: usize,
    /// How long shutdown may take, handoffs included.
    pub grace: Duration,
    /// How big a dead-letter stream may grow.
    pub dlq: crate::store::acks::DlqBound,
    /// Where the spans of delivery attempts and dead-lettering go.
    pub tracer: crate::traces::Tracer,
    /// Where each event's outcome at each subscription is recorded, if anywhere.
    pub outcomes: Option<Arc<dyn outcomes::OutcomeLog>>,
}

/// The delivery runtime.
pub struct Runtime {
    registry: Arc<Registry>,
    catalog: Arc<StreamCatalog>,
    target: RedisTarget,
    settings: Settings,
    owned: watch::Receiver<Arc<Owned>>,
    connector: Arc<dyn Connector>,
    handoffs: Arc<Handoffs>,
    health: Arc<crate::health::Health>,
    metrics: Arc<crate::metrics::Metrics>,
    stats: Mutex<HashMap<String, Arc<SubscriptionStats>>>,
    /// How each running subscription calls its subscriber (breaker states for metrics).
    subscribers: Mutex<HashMap<String, Arc<dyn transport::Subscriber>>>,
    /// The last reading of the subscriptions' state in Redis.
    observed: Mutex<Arc<Observed>>,
    observer: Mutex<Option<JoinHandle<()>>>,
    changed: Notify,
    /// Set to the deadline of shutdown when it begins.
    shutdown: watch::Sender<Option<tokio::time::Instant>>,
    control: Mutex<Option<JoinHandle<()>>>,
    /// Subscriptions whose worker runs (or is stopping) on this instance.
    running: Mutex<std::collections::HashSet<String>>,
    /// Configured subscriptions not yet stored (Redis was unreachable at start-up).
    unstored: Mutex<Vec<Subscription>>,
}

/// Delivery's connections to Redis, made before anything starts: nothing is read, written
/// or leased until [`Runtime::start`].
pub struct Connected {
    target: RedisTarget,
    registry: Arc<Registry>,
    keeper: LeaseKeeper,
    owned: watch::Receiver<Arc<Owned>>,
}

impl Runtime {
    /// Makes the registry's and the lease keeper's connections (this can fail; nothing
    /// starts).
    pub fn connect(target: RedisTarget, settings: &Settings) -> Result<Connected, StoreError> {
        let registry = Arc::new(Registry::new(target.manager()?, &settings.prefix));
        let (keeper, owned) = LeaseKeeper::new(
            target.manager()?,
            settings.instance.clone(),
            LeaseSettings {
                ttl: settings.lease_ttl,
                prefix: settings.prefix.clone(),
                drain_limit: Duration::from_millis(5000) + control::DRAIN_MARGIN,
            },
        );
        Ok(Connected {
            target,
            registry,
            keeper,
            owned,
        })
    }

    /// Starts the control task (which takes the leases); subscriptions from config are
    /// stored first. Subscribers are called through `connector`.
    pub async fn start(
        connected: Connected,
        catalog: Arc<StreamCatalog>,
        settings: Settings,
        configured: Vec<Subscription>,
        connector: Arc<dyn Connector>,
        health: Arc<crate::health::Health>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let Connected {
            target,
            registry,
            keeper,
            owned,
        } = connected;
        let (shutdown, _) = watch::channel(None);
        let runtime = Arc::new(Self {
            registry,
            catalog,
            target,
            settings,
            owned,
            connector,
            handoffs: Arc::new(Handoffs::default()),
            health,
            metrics,
            stats: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
            observed: Mutex::new(Arc::new(Observed::default())),
            observer: Mutex::new(None),
            changed: Notify::new(),
            shutdown,
            control: Mutex::new(None),
            running: Mutex::new(std::collections::HashSet::new()),
            unstored: Mutex::new(configured),
        });
        runtime.store_configured().await;
        let control = tokio::spawn(runtime.clone().control(keeper));
        *lock(&runtime.control) = Some(control);
        *lock(&runtime.observer) = Some(tokio::spawn(runtime.clone().observe()));
        runtime
    }

    /// The subscription registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Rotates a webhook subscription's signing secrets (see [`Registry::rotate_secrets`]);
    /// its worker here restarts signing with them.
    pub async fn rotate_secrets(&self, name: &str) -> redis::RedisResult<Option<String>> {
        let rotated = self.registry.rotate_secrets(name).await?;
        self.changed.notify_one();
        Ok(rotated)
    }

    /// Stores the configured subscriptions not stored yet; keeps those Redis refused for
    /// the next round. One of the same name already in Redis is kept as it is.
    async fn store_configured(&self) {
        let pending = std::mem::take(&mut *lock(&self.unstored));
        let mut failed = Vec::new();
        for sub in pending {
            match self.create(&sub).await {
                Ok(registry::Created::Conflict) => tracing::warn!(
                    subscription = %sub.name(),
                    "a different subscription of this name is stored; keeping the stored one"
                ),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(subscription = %sub.name(), error = %err, "could not store a configured subscription; will retry");
                    failed.push(sub);
                }
            }
        }
        lock(&self.unstored).extend(failed);
    }

    /// Stores a new subscription. Its consumer groups are created first, where it starts,
    /// so that no worker can create them earlier from the beginning of the partitions.
    /// A subscription of a name deleted before starts where the new one says: the old
    /// groups (which a reader racing the delete may have created again) go first.
    pub async fn create(&self, sub: &Subscription) -> redis::RedisResult<registry::Created> {
        self.create_within(sub, registry::Bounds::default()).await
    }

    /// Like [`Runtime::create`], refused (nothing stored, no group made) when a new
    /// subscription would pass `bounds`.
    pub async fn create_within(
        &self,
        sub: &Subscription,
        bounds: registry::Bounds<'_>,
    ) -> redis::RedisResult<registry::Created> {
        if self.registry.get(sub.name()).is_none() {
            if let Some(full) = self.registry.over(bounds) {
                return Ok(registry::Created::Full(full));
            }
            let mut conn = self.target.manager().map_err(store_to_redis)?;
            if unbury(&mut conn, &self.settings.prefix, sub.name()).await? {
                let partitions = self.candidates(sub);
                for key in &partitions {
                    let _ = destroy_group(&mut conn, key, sub.name()).await;
                }
                self.discard_state(&mut conn, &partitions, sub.name())
                    .await?;
            }
            self.ensure_groups(sub, sub.spec.start).await?;
        }
        let created = self.registry.create(sub, bounds).await?;
        if let registry::Created::Full(_) = created {
            // Refused by Redis after the groups were made: they belong to no one.
            if self.registry.get(sub.name()).is_none() {
                let mut conn = self.target.manager().map_err(store_to_redis)?;
                for key in self.candidates(sub) {
                    let _ = destroy_group(&mut conn, &key, sub.name()).await;
                }
            }
            return Ok(created);
        }
        self.changed.notify_one();
        Ok(created)
    }

    /// Stores a subscription, replacing one of the same name.
    pub async fn put(&self, sub: &Subscription) -> redis::RedisResult<bool> {
        let created = self.put_within(sub, registry::Bounds::default()).await?;
        Ok(created == registry::Created::Replaced)
    }

    /// Like [`Runtime::put`]; a new subscription that would pass `bounds` is refused.
    pub async fn put_within(
        &self,
        sub: &Subscription,
        bounds: registry::Bounds<'_>,
    ) -> redis::RedisResult<registry::Created> {
        let created = self.registry.put(sub, bounds).await?;
        if let registry::Created::Full(_) = created {
            return Ok(created);
        }
        let existed = created == registry::Created::Replaced;
        if !existed {
            let mut conn = self.target.manager().map_err(store_to_redis)?;
            if unbury(&mut conn, &self.settings.prefix, sub.name()).await? {
                let partitions = self.candidates(sub);
                for key in &partitions {
                    let _ = destroy_group(&mut conn, key, sub.name()).await;
                }
                self.discard_state(&mut conn, &partitions, sub.name())
                    .await?;
            }
        }
        self.ensure_groups(
            sub,
            if existed {
                Start::Earliest
            } else {
                sub.spec.start
            },
        )
        .await?;
        self.changed.notify_one();
        Ok(created)
    }

    /// Removes a subscription, waits for its worker here to stop (so that no reader
    /// creates its groups again), then removes its consumer groups.
    pub async fn delete(&self, name: &str) -> redis::RedisResult<bool> {
        let sub = self.registry.get(name);
        let existed = self.registry.delete(name).await?;
        self.changed.notify_one();
        let deadline = tokio::time::Instant::now() + self.settings.grace;
        while lock(&self.running).contains(name) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if sub.is_some() || existed {
            let mut conn = self.target.manager().map_err(store_to_redis)?;
            // Groups this misses (created later, or again by a reader that had not heard of
            // the delete) are destroyed by the trimmers, with their dead letters.
            bury(&mut conn, &self.settings.prefix, name).await?;
            let partitions = sub.map(|sub| self.candidates(&sub)).unwrap_or_default();
            for key in &partitions {
                // A partition without the group (or unreachable now) has nothing to remove.
                let _ = destroy_group(&mut conn, key, name).await;
            }
            self.discard_state(&mut conn, &partitions, name).await?;
        }
        self.changed.notify_one();
        Ok(existed)
    }

    /// Deletes what a subscription of `name` left in Redis besides its groups: its
    /// dead-letter streams and its sequence state, so that a new subscription of that name
    /// starts empty.
    async fn discard_state(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        partitions: &[Arc<str>],
        name: &str,
    ) -> redis::RedisResult<()> {
        let prefix = &self.settings.prefix;
        let dead_letters = dlq::discard(conn, prefix, partitions, name).await?;
        let sequences = crate::store::sequence::forget(conn, prefix, name).await?;
        if dead_letters > 0 || sequences > 0 {
            tracing::info!(subscription = %name, dead_letters, sequences, "a deleted subscription's dead letters and sequence state discarded");
        }
        Ok(())
    }

    fn dlq_keys(&self, name: &str) -> Option<(Arc<Subscription>, Vec<String>)> {
        let sub = self.registry.get(name)?;
        let keys = dlq::keys(&self.candidates(&sub), name);
        Some((sub, keys))
    }

    /// A page of a subscription's dead letters; `None` for an unknown subscription.
    pub async fn dlq_list(
        &self,
        name: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Option<redis::RedisResult<Page>> {
        let (_, keys) = self.dlq_keys(name)?;
        let mut conn = match self.target.manager() {
            Ok(conn) => conn,
            Err(err) => return Some(Err(store_to_redis(err))),
        };
        Some(dlq::list(&mut conn, &keys, limit, after).await)
    }

    /// Redrives dead letters (all, or the given cursors); `None` for an unknown subscription.
    pub async fn dlq_redrive(
        &self,
        name: &str,
        only: Option<&[String]>,
    ) -> Option<redis::RedisResult<RedriveReport>> {
        let (sub, keys) = self.dlq_keys(name)?;
        let mut conn = match self.target.manager() {
            Ok(conn) => conn,
            Err(err) => return Some(Err(store_to_redis(err))),
        };
        let subscriber = self.connector.connect(&sub);
        let single = sub.spec.mode == crate::model::subscription::DeliveryMode::Single;
        Some(redrive::redrive(&mut conn, &keys, &*subscriber, single, only).await)
    }

    /// Every Redis key that holds events: the partitions of every stream, and every DLQ
    /// stream in Redis (of the subscriptions that exist, and any other that `SCAN` finds:
    /// of a deleted subscription, or left by an older version).
    pub async fn event_keys(&self) -> redis::RedisResult<(Vec<Arc<str>>, Vec<String>)> {
        let (partitions, mut dlqs) = self.known_event_keys();
        let mut conn = self.target.manager().map_err(store_to_redis)?;
        dlqs.extend(dlq::scan_all(&mut conn, &self.settings.prefix).await?);
        dlqs.sort();
        dlqs.dedup();
        Ok((partitions, dlqs))
    }

    /// The partitions of every stream, and the DLQ of every subscription on each partition
    /// it reads.
    fn known_event_keys(&self) -> (Vec<Arc<str>>, Vec<String>) {
        let partitions = self
            .catalog
            .streams()
            .iter()
            .flat_map(|stream| stream.partition_keys.clone())
            .collect();
        let dlqs = self
            .registry
            .all()
            .iter()
            .flat_map(|sub| dlq::keys(&self.candidates(sub), sub.name()))
            .collect();
        (partitions, dlqs)
    }

    /// A connection to Redis of its own.
    pub fn connection(&self) -> Result<redis::aio::ConnectionManager, StoreError> {
        self.target.manager()
    }

    /// The subscriber of `name` and whether it takes one event a request, for sending it
    /// events outside its stream (a replay); `None` for an unknown subscription.
    pub fn replay_target(&self, name: &str) -> Option<(Arc<dyn transport::Subscriber>, bool)> {
        let sub = self.registry.get(name)?;
        let single = sub.spec.mode == crate::model::subscription::DeliveryMode::Single;
        Some((self.connector.connect(&sub), single))
    }

    /// Purges a subscription's dead letters; `None` for an unknown subscription.
    pub async fn dlq_purge(&self, name: &str) -> Option<redis::RedisResult<u64>> {
        let (_, keys) = self.dlq_keys(name)?;
        let mut conn = match self.target.manager() {
            Ok(conn) => conn,
            Err(err) => return Some(Err(store_to_redis(err))),
        };
        Some(dlq::purge(&mut conn, &keys).await)
    }

    /// Counters of every subscription running here.
    pub fn stats(&self) -> Vec<(String, Arc<SubscriptionStats>)> {
        let stats = lock(&self.stats);
        let mut all: Vec<_> = stats.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether a subscription uses `ordering = "sequence"`.
    pub fn orders_by_sequence(&self, name: &str) -> bool {
        self.registry
            .get(name)
            .is_some_and(|sub| sub.spec.ordering == Ordering::Sequence)
    }

    /// Entries not yet read by a subscription's group, summed over its partitions.
    pub async fn lag(&self, name: &str) -> Option<u64> {
        let sub = self.registry.get(name)?;
        let mut conn = self.target.manager().ok()?;
        let mut total = 0u64;
        for key in self.candidates(&sub) {
            match lag(&mut conn, &key, name).await {
                Ok(Lag::Known(n)) => total += n,
                Ok(Lag::Unknown) => return None,
                // Unreachable now, or no group there yet: nothing to count.
                Ok(Lag::NoGroup) | Err(_) => {}
            }
        }
        Some(total)
    }

    /// Whether each endpoint's breaker is open, per running subscription, with the
    /// endpoints' URLs.
    pub fn breakers(&self) -> Vec<(String, Vec<(String, bool)>)> {
        let subscribers: Vec<(String, Arc<dyn transport::Subscriber>)> = lock(&self.subscribers)
            .iter()
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect();
        let mut all: Vec<(String, Vec<(String, bool)>)> = subscribers
            .into_iter()
            .filter_map(|(name, subscriber)| {
                let sub = self.registry.get(&name)?;
                let open = subscriber.open_breakers();
                let endpoints = sub.spec.endpoints.iter().cloned().zip(open).collect();
                Some((name, endpoints))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Most subscriptions in all that the API may create (0: no limit).
    pub fn max_subscriptions(&self) -> usize {
        self.settings.max_subscriptions
    }

    /// This instance's id (its consumer name and lease value).
    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    /// How many partitions this instance holds.
    pub fn owned_partitions(&self) -> usize {
        self.owned.borrow().len()
    }

    /// The partitions a subscription reads: every partition of every stream whose topics
    /// it could match (streams for the domains it names are created if missing).
    pub fn candidates(&self, sub: &Subscription) -> Vec<Arc<str>> {
        for domain in sub.literal_domains() {
            let _ = self.catalog.placement(&domain);
        }
        self.catalog
            .streams()
            .iter()
            .filter(|s| s.may_serve(|d| sub.may_match_domain(d)))
            .flat_map(|s| s.partition_keys.iter().cloned())
            .collect()
    }

    async fn ensure_groups(&self, sub: &Subscription, start: Start) -> redis::RedisResult<()> {
        let mut conn = self.target.manager().map_err(store_to_redis)?;
        let start = match start {
            Start::Latest => "$",
            Start::Earliest => "0",
        };
        for key in self.candidates(sub) {
            ensure_group(&mut conn, &key, sub.name(), start).await?;
        }
        Ok(())
    }

    /// Leaves the cluster: hands every partition over (nothing new is read or sent, the
    /// requests in flight finish and their acks are written, then each lease is released
    /// for the others to take at once), stops the workers and releases what is left, all
    /// by `deadline`. Nothing is dead-lettered by a shutdown.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        if let Some(observer) = lock(&self.observer).take() {
            observer.abort();
        }
        let _ = self.shutdown.send(Some(deadline));
        let control = lock(&self.control).take();
        if let Some(control) = control {
            let _ = control.await;
        }
    }
}

fn store_to_redis(err: StoreError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis unavailable", err.to_string()))
}
