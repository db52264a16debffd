//! The delivery runtime: subscriptions, partition ownership, and one worker per
//! subscription (partition readers, worker shards with per-key lanes, and a batched acker);
//! DLQ listing and replay. How a subscriber is called is behind [`transport`].
//!
//! A control task keeps it all in step: it refreshes the subscriptions from Redis, starts
//! and stops workers, tells each worker which partitions its subscription reads, and keeps
//! this instance's leases.

mod dispatch;
pub mod handoff;
pub mod lanes;
pub mod registry;
pub mod reorder;
pub mod replay;
pub mod shard;
pub mod stats;
pub mod subscription;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::catalog::StreamCatalog;
use crate::model::subscription::{Ordering, Start};
use crate::model::sync::lock;
use crate::store::acks::Acker;
use crate::store::dlq::{self, Page};
use crate::store::groups::{bury, destroy_group, ensure_group, lag, unbury, Lag};
use crate::store::lease::{LeaseKeeper, LeaseSettings, Owned};
use crate::store::reader::Reader;
use crate::store::{RedisTarget, StoreError};
use dispatch::ShardDispatch;
use handoff::Handoffs;
use registry::Registry;
use replay::ReplayReport;
use shard::{Shard, ShardContext};
use stats::SubscriptionStats;
use subscription::Subscription;
use transport::Connector;

/// Room in a worker's queues beyond its read-ahead budget (a read may return one entry
/// per partition beyond it).
const QUEUE_SLACK: usize = 8192;

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
    /// How long shutdown may take, handoffs included.
    pub grace: Duration,
    /// How big a dead-letter stream may grow.
    pub dlq: crate::store::acks::DlqBound,
}

/// Margin added to the longest delivery timeout: how long a handoff may wait for the
/// acks of its last requests, and how long a new owner waits beyond the timeout before
/// claiming a partition whose owner did not hand it over.
const DRAIN_MARGIN: Duration = Duration::from_millis(500);

struct Worker {
    spec: crate::model::subscription::SubscriptionSpec,
    secrets: Option<Arc<crate::model::signing::SigningSecrets>>,
    stop: watch::Sender<bool>,
    partitions: watch::Sender<Arc<Vec<Arc<str>>>>,
    tasks: Vec<JoinHandle<()>>,
    acker: JoinHandle<()>,
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
    stats: Mutex<HashMap<String, Arc<SubscriptionStats>>>,
    changed: Notify,
    /// Set to the deadline of shutdown when it begins.
    shutdown: watch::Sender<Option<tokio::time::Instant>>,
    control: Mutex<Option<JoinHandle<()>>>,
    /// Subscriptions whose worker runs (or is stopping) on this instance.
    running: Mutex<std::collections::HashSet<String>>,
    /// Configured subscriptions not yet stored (Redis was unreachable at start-up).
    unstored: Mutex<Vec<Subscription>>,
}

impl Runtime {
    /// Starts the control task; subscriptions from config are stored first. Subscribers
    /// are called through `connector`.
    pub async fn start(
        catalog: Arc<StreamCatalog>,
        target: RedisTarget,
        settings: Settings,
        configured: Vec<Subscription>,
        connector: Arc<dyn Connector>,
        health: Arc<crate::health::Health>,
    ) -> Result<Arc<Self>, StoreError> {
        let registry = Arc::new(Registry::new(target.manager()?, &settings.prefix));
        let (keeper, owned) = LeaseKeeper::new(
            target.manager()?,
            settings.instance.clone(),
            LeaseSettings {
                ttl: settings.lease_ttl,
                prefix: settings.prefix.clone(),
                drain_limit: Duration::from_millis(5000) + DRAIN_MARGIN,
            },
        );
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
            stats: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            shutdown,
            control: Mutex::new(None),
            running: Mutex::new(std::collections::HashSet::new()),
            unstored: Mutex::new(configured),
        });
        runtime.store_configured().await;
        let control = tokio::spawn(runtime.clone().control(keeper));
        *lock(&runtime.control) = Some(control);
        Ok(runtime)
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
        if self.registry.get(sub.name()).is_none() {
            let mut conn = self.target.manager().map_err(store_to_redis)?;
            if unbury(&mut conn, &self.settings.prefix, sub.name()).await? {
                for key in self.candidates(sub) {
                    let _ = destroy_group(&mut conn, &key, sub.name()).await;
                }
            }
            self.ensure_groups(sub, sub.spec.start).await?;
        }
        let created = self.registry.create(sub).await?;
        self.changed.notify_one();
        Ok(created)
    }

    /// Stores a subscription, replacing one of the same name.
    pub async fn put(&self, sub: &Subscription) -> redis::RedisResult<bool> {
        let existed = self.registry.put(sub).await?;
        if !existed {
            let mut conn = self.target.manager().map_err(store_to_redis)?;
            if unbury(&mut conn, &self.settings.prefix, sub.name()).await? {
                for key in self.candidates(sub) {
                    let _ = destroy_group(&mut conn, &key, sub.name()).await;
                }
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
        Ok(existed)
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
        if let Some(sub) = sub {
            let mut conn = self.target.manager().map_err(store_to_redis)?;
            // Groups this misses (created later, or again by a reader that had not heard of
            // the delete) are destroyed by the trimmers.
            bury(&mut conn, &self.settings.prefix, name).await?;
            for key in self.candidates(&sub) {
                // A partition without the group (or unreachable now) has nothing to remove.
                let _ = destroy_group(&mut conn, &key, name).await;
            }
        }
        self.changed.notify_one();
        Ok(existed)
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

    /// Replays dead letters (all, or the given cursors); `None` for an unknown subscription.
    pub async fn dlq_replay(
        &self,
        name: &str,
        only: Option<&[String]>,
    ) -> Option<redis::RedisResult<ReplayReport>> {
        let (sub, keys) = self.dlq_keys(name)?;
        let mut conn = match self.target.manager() {
            Ok(conn) => conn,
            Err(err) => return Some(Err(store_to_redis(err))),
        };
        let subscriber = self.connector.connect(&sub);
        let single = sub.spec.mode == crate::model::subscription::DeliveryMode::Single;
        Some(replay::replay(&mut conn, &keys, &*subscriber, single, only).await)
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

    /// The partitions a subscription reads: every partition of every stream whose topics
    /// it could match (streams for the domains it names are created if missing).
    pub fn candidates(&self, sub: &Subscription) -> Vec<Arc<str>> {
        for domain in sub.literal_domains() {
            let _ = self.catalog.route(&domain);
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
        let _ = self.shutdown.send(Some(deadline));
        let control = lock(&self.control).take();
        if let Some(control) = control {
            let _ = control.await;
        }
    }

    async fn control(self: Arc<Self>, mut keeper: LeaseKeeper) {
        let mut workers: HashMap<String, Worker> = HashMap::new();
        let mut stop = self.shutdown.subscribe();
        let tick = self.settings.lease_ttl / 4;
        let mut first = true;
        let mut universe: Vec<Arc<str>> = Vec::new();
        let part = self.health.part("control");
        loop {
            part.round(async {
                if !lock(&self.unstored).is_empty() {
                    self.store_configured().await;
                }
                match self.registry.refresh(first).await {
                    Ok(_) => first = false,
                    Err(err) => tracing::warn!(error = %err, "could not refresh subscriptions"),
                }
                self.reconcile(&mut workers).await;
                universe.clear();
                for worker in workers.values() {
                    universe.extend(worker.partitions.borrow().iter().cloned());
                }
                universe.sort();
                universe.dedup();
                keeper.set_drain_limit(self.drain_limit());
                if let Err(err) = keeper.tick(&universe, &*self.handoffs).await {
                    tracing::warn!(error = %err, "lease round failed; will retry");
                }
            })
            .await;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.changed.notified() => {}
                _ = stop.changed() => break,
            }
        }
        // Everything below shares one deadline: hand the partitions over (the others take
        // them as they are released), then stop the workers and release what is left.
        let deadline = stop
            .borrow()
            .unwrap_or_else(|| tokio::time::Instant::now() + self.settings.grace);
        keeper.leave().await;
        let round = Duration::from_millis(50).min(tick);
        while keeper.held() > 0 && tokio::time::Instant::now() < deadline {
            if let Err(err) = keeper.tick(&universe, &*self.handoffs).await {
                tracing::warn!(error = %err, "lease round failed while handing over; will retry");
            }
            if keeper.held() == 0 {
                break;
            }
            tokio::time::sleep(round).await;
        }
        let stopping: Vec<_> = workers
            .into_values()
            .map(|worker| tokio::spawn(Self::stop_worker(worker, deadline)))
            .collect();
        for task in stopping {
            let _ = task.await;
        }
        keeper.release_all().await;
        tracing::info!("delivery stopped; leases released");
    }

    /// How long a handoff may wait: the longest delivery timeout of the subscriptions,
    /// and a margin for the last acks.
    fn drain_limit(&self) -> Duration {
        let longest = self
            .registry
            .all()
            .iter()
            .map(|sub| sub.spec.timeout_ms)
            .max()
            .unwrap_or(0);
        Duration::from_millis(longest) + DRAIN_MARGIN
    }

    async fn stop_worker(worker: Worker, deadline: tokio::time::Instant) {
        let _ = worker.stop.send(true);
        for task in worker.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(subscription = %worker.spec.name, "grace period ended with deliveries in flight; they stay pending");
                abort.abort();
            }
        }
        let _ = worker.acker.await;
    }

    async fn reconcile(self: &Arc<Self>, workers: &mut HashMap<String, Worker>) {
        let subs = self.registry.all();
        let gone: Vec<String> = workers
            .iter()
            .filter(|(name, worker)| {
                !subs.iter().any(|s| {
                    s.name() == name.as_str()
                        && s.spec == worker.spec
                        && s.secrets == worker.secrets
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(worker) = workers.remove(&name) {
                // Stopped aside, so that leases keep being renewed meanwhile.
                let deadline = tokio::time::Instant::now() + self.settings.grace;
                let runtime = self.clone();
                tokio::spawn(async move {
                    Self::stop_worker(worker, deadline).await;
                    lock(&runtime.running).remove(&name);
                    if runtime.registry.get(&name).is_none() {
                        lock(&runtime.stats).remove(&name);
                    }
                    runtime.changed.notify_one();
                });
            }
        }
        for sub in subs {
            let partitions = Arc::new(self.candidates(&sub));
            match workers.get(sub.name()) {
                Some(worker) => {
                    if **worker.partitions.borrow() != *partitions {
                        worker.partitions.send_replace(partitions);
                    }
                }
                // A replaced subscription starts once its old worker has stopped.
                None if lock(&self.running).contains(sub.name()) => {}
                None => match self.start_worker(sub.clone(), partitions).await {
                    Ok(worker) => {
                        lock(&self.running).insert(sub.name().to_string());
                        workers.insert(sub.name().to_string(), worker);
                    }
                    Err(err) => {
                        tracing::warn!(subscription = %sub.name(), error = %err, "could not start delivery; will retry")
                    }
                },
            }
        }
    }

    async fn start_worker(
        &self,
        sub: Arc<Subscription>,
        partitions: Arc<Vec<Arc<str>>>,
    ) -> Result<Worker, StoreError> {
        let name = sub.name().to_string();
        // Groups missing on partitions created after the subscription start at the
        // beginning of those partitions.
        {
            let mut conn = self.target.manager()?;
            for key in partitions.iter() {
                ensure_group(&mut conn, key, &name, "0").await?;
            }
        }
        let stats = lock(&self.stats).entry(name.clone()).or_default().clone();
        let budget = sub.spec.max_in_flight;
        let permits = Arc::new(Semaphore::new(budget));
        // Under sequence ordering each finished event also records its key's next number.
        let per_event = if sub.spec.ordering == Ordering::Sequence {
            2
        } else {
            1
        };
        let (ack_tx, ack_rx) = mpsc::channel(per_event * budget + QUEUE_SLACK);
        let acker = tokio::spawn(
            Acker::new(
                self.target.manager()?,
                name.clone(),
                self.settings.instance.clone(),
                ack_rx,
                permits.clone(),
                self.health.part(format!("acker:{name}")),
            )
            .with_dlq_bound(self.settings.dlq)
            .run(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let (partitions_tx, partitions_rx) = watch::channel(partitions);
        let subscriber = self.connector.connect(&sub);
        let context = ShardContext {
            sub: sub.clone(),
            subscriber: subscriber.clone(),
            acks: ack_tx.clone(),
            permits: permits.clone(),
            owned: self.owned.clone(),
            stats: stats.clone(),
            shards: self.settings.shards.max(1),
            store: self.target.manager()?,
            handoffs: self.handoffs.clone(),
        };
        let mut tasks = Vec::new();
        let mut shard_senders = Vec::new();
        for _ in 0..self.settings.shards.max(1) {
            let (tx, rx) = mpsc::channel(1024);
            shard_senders.push(tx);
            tasks.push(tokio::spawn(
                Shard::new(context.clone(), rx, stop_rx.clone()).run(),
            ));
        }
        let read_timeout = self.settings.read_block + Duration::from_secs(5);
        let dispatch = ShardDispatch::new(
            sub,
            subscriber,
            shard_senders,
            ack_tx,
            permits.clone(),
            stats,
        );
        let readers = self.settings.readers.max(1);
        for index in 0..readers {
            let reader = Reader {
                conn: self.target.manager_with_timeout(read_timeout)?,
                streams: self.target.stream_conn(read_timeout),
                share: (index, readers),
                group: name.clone(),
                consumer: self.settings.instance.clone(),
                partitions: partitions_rx.clone(),
                owned: self.owned.clone(),
                dispatch: dispatch.clone(),
                permits: permits.clone(),
                block: self.settings.read_block,
                linger: self.settings.read_linger,
                stop: stop_rx.clone(),
                debt: 0,
                takeover_wait: Duration::from_millis(context.sub.spec.timeout_ms) + DRAIN_MARGIN,
                part: self.health.part(format!("reader:{name}:{index}")),
            };
            tasks.insert(0, tokio::spawn(reader.run()));
        }
        tracing::info!(subscription = %name, "delivery started");
        Ok(Worker {
            spec: context.sub.spec.clone(),
            secrets: context.sub.secrets.clone(),
            stop,
            partitions: partitions_tx,
            tasks,
            acker,
        })
    }
}

fn store_to_redis(err: StoreError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis unavailable", err.to_string()))
}
