//! The control task: keeps the subscriptions, the workers and this instance's leases in
//! step, and leaves the cluster on shutdown; workers (partition readers, shards, an acker)
//! are started and stopped here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::dispatch::ShardDispatch;
use super::shard::{RequestMetrics, Shard, ShardContext};
use super::sink::SinkWorker;
use super::stats::SubscriptionStats;
use super::subscription::Subscription;
use super::Runtime;
use crate::health::Health;
use crate::model::subscription::Ordering;
use crate::model::sync::lock;
use crate::store::acks::Acker;
use crate::store::groups::ensure_group;
use crate::store::lease::LeaseKeeper;
use crate::store::reader::{Dispatch, Reader};
use crate::store::StoreError;

/// Room in a worker's queues beyond its read-ahead budget (a read may return one entry
/// per partition beyond it).
const QUEUE_SLACK: usize = 8192;

/// Margin added to the longest delivery timeout: how long a handoff may wait for the
/// acks of its last requests, and how long a new owner waits beyond the timeout before
/// claiming a partition whose owner did not hand it over.
pub(super) const DRAIN_MARGIN: Duration = Duration::from_millis(500);

struct Worker {
    spec: crate::model::subscription::SubscriptionSpec,
    secrets: Option<Arc<crate::model::signing::SigningSecrets>>,
    rewinds: i64,
    stop: watch::Sender<bool>,
    partitions: watch::Sender<Arc<Vec<Arc<str>>>>,
    tasks: Vec<JoinHandle<()>>,
    acker: JoinHandle<()>,
}

impl Runtime {
    pub(super) async fn control(self: Arc<Self>, mut keeper: LeaseKeeper) {
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
            .map(|worker| tokio::spawn(Self::stop_worker(worker, deadline, self.health.clone())))
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

    async fn stop_worker(worker: Worker, deadline: tokio::time::Instant, health: Arc<Health>) {
        let _ = worker.stop.send(true);
        let name = &worker.spec.name;
        for task in worker.tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => note_join_error(&health, name, err),
                Err(_) => {
                    tracing::warn!(subscription = %name, "grace period ended with deliveries in flight; they stay pending");
                    abort.abort();
                }
            }
        }
        if let Err(err) = worker.acker.await {
            note_join_error(&health, name, err);
        }
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
                        && s.rewinds == worker.rewinds
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
                    Self::stop_worker(worker, deadline, runtime.health.clone()).await;
                    lock(&runtime.running).remove(&name);
                    if runtime.registry.get(&name).is_none() {
                        lock(&runtime.stats).remove(&name);
                        lock(&runtime.subscribers).remove(&name);
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
        let stats = lock(&self.stats)
            .entry(name.clone())
            .or_insert_with(|| Arc::new(SubscriptionStats::new(&self.metrics, &name)))
            .clone();
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
            .with_round_trip(self.metrics.round_trip("ack"))
            .run(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let (partitions_tx, partitions_rx) = watch::channel(partitions);
        let subscriber = self.connector.connect(&sub);
        lock(&self.subscribers).insert(name.clone(), subscriber.clone());
        let requests = Arc::new(RequestMetrics::new(
            &self.metrics,
            &name,
            &sub.spec.endpoints,
        ));
        let mut tasks = Vec::new();
        let readers = Readers {
            name: &name,
            sub: &sub,
            partitions: partitions_rx,
            permits: permits.clone(),
            stop: stop_rx.clone(),
        };
        if subscriber.sink().is_some() {
            let (dispatch, task) = SinkWorker {
                sub: sub.clone(),
                subscriber,
                acks: ack_tx,
                owned: self.owned.clone(),
                stats,
                requests,
                handoffs: self.handoffs.clone(),
                stop: stop_rx,
            }
            .start(permits, self.health.part(format!("sink:{name}")));
            tasks.push(task);
            self.start_readers(readers, dispatch, &mut tasks)?;
        } else {
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
                requests,
                tracer: self.settings.tracer.clone(),
                outcomes: self.settings.outcomes.clone(),
                name: Arc::from(name.as_str()),
            };
            let mut shard_senders = Vec::new();
            for index in 0..self.settings.shards.max(1) {
                let (tx, rx) = mpsc::channel(1024);
                shard_senders.push(tx);
                let part = self.health.part(format!("shard:{name}:{index}"));
                tasks.push(tokio::spawn(
                    Shard::new(context.clone(), rx, stop_rx.clone()).run(part),
                ));
            }
            let dispatch = ShardDispatch::new(
                sub.clone(),
                subscriber,
                shard_senders,
                ack_tx,
                permits,
                stats,
            );
            self.start_readers(readers, dispatch, &mut tasks)?;
        }
        tracing::info!(subscription = %name, "delivery started");
        Ok(Worker {
            spec: sub.spec.clone(),
            secrets: sub.secrets.clone(),
            rewinds: sub.rewinds,
            stop,
            partitions: partitions_tx,
            tasks,
            acker,
        })
    }
}

/// What a subscription's readers share.
struct Readers<'a> {
    name: &'a str,
    sub: &'a Subscription,
    partitions: watch::Receiver<Arc<Vec<Arc<str>>>>,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl Runtime {
    /// Starts the readers of a subscription, handing their entries to `dispatch`; they go
    /// first in `tasks`, so that they stop before what they feed.
    fn start_readers<D: Dispatch + Clone + Sync + 'static>(
        &self,
        readers: Readers<'_>,
        dispatch: D,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<(), StoreError> {
        let Readers {
            name,
            sub,
            partitions,
            permits,
            stop,
        } = readers;
        let read_timeout = self.settings.read_block + Duration::from_secs(5);
        let count = self.settings.readers.max(1);
        for index in 0..count {
            let reader = Reader {
                conn: self.target.manager_with_timeout(read_timeout)?,
                streams: self.target.stream_conn(read_timeout),
                share: (index, count),
                group: name.to_string(),
                consumer: self.settings.instance.clone(),
                partitions: partitions.clone(),
                owned: self.owned.clone(),
                dispatch: dispatch.clone(),
                permits: permits.clone(),
                block: self.settings.read_block,
                linger: sub
                    .spec
                    .read
                    .linger_ms
                    .map_or(self.settings.read_linger, Duration::from_millis),
                stop: stop.clone(),
                debt: 0,
                newest: Default::default(),
                takeover_wait: Duration::from_millis(sub.spec.timeout_ms) + DRAIN_MARGIN,
                part: self.health.part(format!("reader:{name}:{index}")),
                handoffs: self.handoffs.clone(),
                round_trip: self.metrics.round_trip("read"),
            };
            tasks.insert(0, tokio::spawn(reader.run()));
        }
        Ok(())
    }
}

/// A worker's task that ended by a panic outside its watched rounds is counted too.
fn note_join_error(health: &Health, subscription: &str, err: tokio::task::JoinError) {
    if err.is_panic() {
        let message = match err.into_panic().downcast::<String>() {
            Ok(text) => *text,
            Err(other) => other.downcast_ref::<&str>().map_or_else(
                || "a panic without a message".to_string(),
                |t| t.to_string(),
            ),
        };
        health.record_panic(&format!("worker:{subscription}"), &message);
    }
}
