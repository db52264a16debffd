//! Replays from the event store: archived events matching a filter, in stored order, sent
//! again into one subscription only (each request marked `evr-replay: true`; events its
//! topics do not match are left out) or published again to a topic. Rate-limited, with
//! progress (done, total, rate, ETA), cancellable, and resumable from its last page; the
//! state of each job is kept in Redis so that any instance can answer for it.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use super::rows::{row_envelope, Archived, ARCHIVED_COLUMNS};
use super::{EventStore, EventStoreError};
use crate::delivery::resend::{send_tried, Stored};
use crate::delivery::Runtime;
use crate::model::clock::now_ms;
use crate::model::envelope::Envelope;
use crate::publish::Publisher;
use crate::store::replays;

/// Events read from PostgreSQL at a time.
const PAGE: i64 = 500;

/// Events between two saves of a job's state (and looks for a stop request).
const STEP: usize = 50;

/// Longest time between two saves of a job's state.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Tries of one event into a subscription before it counts as failed.
const TRIES: u32 = 3;

/// Which events to replay.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayFilter {
    /// Topics (exact names); any when empty.
    pub topics: Vec<String>,
    /// Event types; any when empty.
    pub types: Vec<String>,
    /// Entity keys; any when empty.
    pub keys: Vec<String>,
    /// One business flow.
    pub correlation_id: Option<String>,
}

/// Where replayed events go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Sent to this subscription only.
    Subscription(String),
    /// Published again to this topic (every subscription of it gets them).
    Topic(String),
}

/// A replay as asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySpec {
    /// Stored at or after (RFC 3339).
    pub from: String,
    /// Stored before (RFC 3339).
    pub to: String,
    /// Which events.
    #[serde(default)]
    pub filter: ReplayFilter,
    /// Where to.
    pub target: Target,
    /// Most events per second (default 1000).
    #[serde(default = "default_rate")]
    pub rate: u32,
}

fn default_rate() -> u32 {
    1000
}

/// A job's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayStatus {
    pub id: String,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    pub spec: ReplaySpec,
    /// Who asked.
    pub principal: String,
    /// Events sent (or published) so far.
    pub done: u64,
    /// Events that failed every try (subscription target).
    pub failed: u64,
    /// Events matching the filter when the job began.
    pub total: u64,
    /// Events per second since the job (or its resumption) began.
    pub rate: f64,
    /// Seconds left at that rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// Where the next page starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<(i64, String, i32, i64)>,
    pub started_ms: u64,
    pub updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a replay could not begin.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The request is wrong; the message says where.
    #[error("{0}")]
    Invalid(String),
    /// No such subscription.
    #[error("no subscription named `{0}`")]
    UnknownSubscription(String),
    /// No such job.
    #[error("no replay `{0}`")]
    Unknown(String),
    /// The job is running.
    #[error("replay `{0}` is running")]
    Running(String),
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] EventStoreError),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Starts, reports, cancels and resumes replays.
pub struct Replays {
    store: Arc<EventStore>,
    delivery: Arc<Runtime>,
    publisher: Arc<Publisher>,
    conn: ConnectionManager,
    prefix: String,
}

fn parse_time(name: &str, text: &str) -> Result<SystemTime, ReplayError> {
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        ReplayError::Invalid(format!("`{name}` is not an RFC 3339 time ({e}): `{text}`"))
    })
}

impl Replays {
    /// Replays out of `store`, into `delivery`'s subscriptions or through `publisher`.
    pub fn new(
        store: Arc<EventStore>,
        delivery: Arc<Runtime>,
        publisher: Arc<Publisher>,
        conn: ConnectionManager,
        prefix: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            delivery,
            publisher,
            conn,
            prefix: prefix.to_string(),
        })
    }

    /// Checks `spec`, counts its events and starts it; its first status.
    pub async fn start(
        self: &Arc<Self>,
        spec: ReplaySpec,
        principal: &str,
    ) -> Result<ReplayStatus, ReplayError> {
        let from = parse_time("from", &spec.from)?;
        let to = parse_time("to", &spec.to)?;
        if to <= from {
            return Err(ReplayError::Invalid("`to` must be after `from`".into()));
        }
        if spec.rate == 0 {
            return Err(ReplayError::Invalid("`rate` must be at least 1".into()));
        }
        if let Target::Subscription(name) = &spec.target {
            if self.delivery.replay_target(name).is_none() {
                return Err(ReplayError::UnknownSubscription(name.clone()));
            }
        }
        let total = self.count(&spec, from, to).await?;
        let now = now_ms();
        let status = ReplayStatus {
            id: uuid::Uuid::new_v4().to_string(),
            state: "running".into(),
            spec,
            principal: principal.to_string(),
            done: 0,
            failed: 0,
            total,
            rate: 0.0,
            eta_s: None,
            cursor: None,
            started_ms: now,
            updated_ms: now,
            error: None,
        };
        self.save(&status).await?;
        tokio::spawn(self.clone().run(status.clone()));
        Ok(status)
    }

    /// A job's status.
    pub async fn status(&self, id: &str) -> Result<ReplayStatus, ReplayError> {
        let mut conn = self.conn.clone();
        let json = replays::load(&mut conn, &self.prefix, id)
            .await?
            .ok_or_else(|| ReplayError::Unknown(id.to_string()))?;
        serde_json::from_str(&json).map_err(|e| ReplayError::Invalid(e.to_string()))
    }

    /// Asks a running job to stop after its current page.
    pub async fn cancel(&self, id: &str) -> Result<ReplayStatus, ReplayError> {
        let status = self.status(id).await?;
        let mut conn = self.conn.clone();
        replays::request_cancel(&mut conn, &self.prefix, id).await?;
        Ok(status)
    }

    /// Goes on with a job that was cancelled, failed, or whose instance stopped (no update
    /// for 30 s), from its last page.
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<ReplayStatus, ReplayError> {
        let mut status = self.status(id).await?;
        let stale = now_ms().saturating_sub(status.updated_ms) > 30_000;
        if status.state == "done" || (status.state == "running" && !stale) {
            return Err(ReplayError::Running(id.to_string()));
        }
        let mut conn = self.conn.clone();
        replays::clear_cancel(&mut conn, &self.prefix, id).await?;
        status.state = "running".into();
        status.error = None;
        status.updated_ms = now_ms();
        self.save(&status).await?;
        tokio::spawn(self.clone().run(status.clone()));
        Ok(status)
    }

    async fn save(&self, status: &ReplayStatus) -> Result<(), ReplayError> {
        let json =
            serde_json::to_string(status).map_err(|e| ReplayError::Invalid(e.to_string()))?;
        let mut conn = self.conn.clone();
        replays::save(&mut conn, &self.prefix, &status.id, &json).await?;
        Ok(())
    }

    /// The WHERE clause and parameters of a spec (after `$offset` parameters).
    fn clause(
        spec: &ReplaySpec,
        from: SystemTime,
        to: SystemTime,
    ) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut clauses = vec!["stored_at >= $1".to_string(), "stored_at < $2".to_string()];
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
        for (column, values) in [
            ("topic", &spec.filter.topics),
            ("event_type", &spec.filter.types),
            ("entity_key", &spec.filter.keys),
        ] {
            if !values.is_empty() {
                params.push(Box::new(values.clone()));
                clauses.push(format!("{column} = ANY(${})", params.len()));
            }
        }
        if let Some(correlation_id) = &spec.filter.correlation_id {
            params.push(Box::new(correlation_id.clone()));
            clauses.push(format!("correlation_id = ${}", params.len()));
        }
        (clauses.join(" AND "), params)
    }

    async fn count(
        &self,
        spec: &ReplaySpec,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<u64, ReplayError> {
        let client = self.store.client().await?;
        let (clause, params) = Self::clause(spec, from, to);
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM evr_events WHERE {clause}"),
                &refs,
            )
            .await
            .map_err(EventStoreError::from)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Runs a job from its cursor to the end (or until cancelled), saving its state after
    /// every page.
    async fn run(self: Arc<Self>, mut status: ReplayStatus) {
        let result = self.pages(&mut status).await;
        match result {
            Ok(true) => status.state = "done".into(),
            Ok(false) => status.state = "cancelled".into(),
            Err(err) => {
                tracing::warn!(replay = %status.id, error = %err, "replay failed");
                status.state = "failed".into();
                status.error = Some(err.to_string());
            }
        }
        status.updated_ms = now_ms();
        status.eta_s = None;
        if let Err(err) = self.save(&status).await {
            tracing::warn!(replay = %status.id, error = %err, "replay state not saved");
        }
    }

    /// Returns whether it reached the end (false: cancelled).
    async fn pages(&self, status: &mut ReplayStatus) -> Result<bool, ReplayError> {
        let from = parse_time("from", &status.spec.from)?;
        let to = parse_time("to", &status.spec.to)?;
        let rate = NonZeroU32::new(status.spec.rate).unwrap_or(NonZeroU32::MIN);
        // Evenly spaced: a burst of one.
        let limiter = governor::RateLimiter::direct(
            governor::Quota::per_second(rate).allow_burst(NonZeroU32::MIN),
        );
        let target = match &status.spec.target {
            Target::Subscription(name) => Some(
                self.delivery
                    .replay_target(name)
                    .map(|(subscriber, single)| (name.clone(), subscriber, single))
                    .ok_or_else(|| ReplayError::UnknownSubscription(name.clone()))?,
            ),
            Target::Topic(_) => None,
        };
        let subscription = match &status.spec.target {
            Target::Subscription(name) => self.delivery.registry().get(name),
            Target::Topic(_) => None,
        };
        let matches = |topic: &str| subscription.as_ref().is_none_or(|sub| sub.matches(topic));
        // A bulk subscription gets its events in requests as large as its own.
        let batch_size = match (&target, &subscription) {
            (Some((_, _, false)), Some(sub)) => sub.spec.bulk.max_events.max(1),
            _ => 1,
        };
        let step = STEP.max(batch_size);
        let mut sending = Sending::new(batch_size);
        let began = Instant::now();
        let done_before = status.done;
        loop {
            let page = self.page(status, from, to).await?;
            if page.is_empty() {
                return Ok(true);
            }
            // After every `STEP` events or `FLUSH_EVERY`, the cursor moves past what was
            // sent, the state is saved and a stop request is honoured.
            let mut batch = Vec::new();
            let mut reached = None;
            let (mut since_flush, mut last_flush) = (0, Instant::now());
            for (us, stream, partition, redis_id, seq, envelope) in page {
                limiter.until_ready().await;
                match &target {
                    Some((_, subscriber, single)) => {
                        if matches(&envelope.topic) {
                            // A request is sent before it would hold two events of a
                            // key, or when it is full.
                            if sending.must_send_before(&envelope.key)
                                && self
                                    .deliver(&**subscriber, &mut sending, *single, status)
                                    .await?
                            {
                                return Ok(false);
                            }
                            let entry = Stored {
                                key: format!("{stream}.{partition}"),
                                id: redis_id,
                                raw: bytes::Bytes::from(envelope.encode()),
                            };
                            sending.push(envelope.key, entry);
                        } else {
                            status.done += 1;
                        }
                    }
                    None => {
                        // Published again as an event of the target topic.
                        let mut envelope = envelope;
                        if let Target::Topic(topic) = &status.spec.target {
                            envelope.topic = topic.clone();
                        }
                        batch.push((envelope, None))
                    }
                }
                reached = Some((us, stream, partition, seq));
                since_flush += 1;
                if since_flush >= step || last_flush.elapsed() >= FLUSH_EVERY {
                    // The cursor moves past what was sent only.
                    if let Some((_, subscriber, single)) = &target {
                        if self
                            .deliver(&**subscriber, &mut sending, *single, status)
                            .await?
                        {
                            return Ok(false);
                        }
                    }
                    let cursor = reached.take();
                    if self
                        .flush(status, &mut batch, cursor, began, done_before)
                        .await?
                    {
                        return Ok(false);
                    }
                    (since_flush, last_flush) = (0, Instant::now());
                }
            }
            if let Some((_, subscriber, single)) = &target {
                if self
                    .deliver(&**subscriber, &mut sending, *single, status)
                    .await?
                {
                    return Ok(false);
                }
            }
            if reached.is_some()
                && self
                    .flush(status, &mut batch, reached, began, done_before)
                    .await?
            {
                return Ok(false);
            }
        }
    }

    /// Sends what waits in `sending` to the subscription, once its subscriber takes
    /// events (an unhealthy Dapr app is waited for, not counted against); returns whether
    /// the job was asked to stop while it waited.
    async fn deliver(
        &self,
        subscriber: &dyn crate::delivery::transport::Subscriber,
        sending: &mut Sending,
        single: bool,
        status: &mut ReplayStatus,
    ) -> Result<bool, ReplayError> {
        if sending.entries.is_empty() {
            return Ok(false);
        }
        let mut looked = Instant::now();
        while let Some(until) = subscriber.paused_until() {
            tokio::time::sleep_until(until.into()).await;
            if looked.elapsed() >= FLUSH_EVERY {
                looked = Instant::now();
                let mut conn = self.conn.clone();
                if replays::cancel_requested(&mut conn, &self.prefix, &status.id).await? {
                    return Ok(true);
                }
            }
        }
        let (taken, failed) = send_tried(subscriber, sending.take(), single, TRIES).await;
        status.done += taken;
        status.failed += failed;
        Ok(false)
    }

    /// Publishes what waits (topic target), moves the cursor, saves the state; returns
    /// whether the job was asked to stop.
    async fn flush(
        &self,
        status: &mut ReplayStatus,
        batch: &mut Vec<(Envelope, Option<crate::traces::Started>)>,
        cursor: Option<(i64, String, i32, i64)>,
        began: Instant,
        done_before: u64,
    ) -> Result<bool, ReplayError> {
        if let Target::Topic(topic) = &status.spec.target {
            let n = batch.len() as u64;
            if n > 0 {
                self.publish(topic, std::mem::take(batch)).await?;
                status.done += n;
            }
        }
        if cursor.is_some() {
            status.cursor = cursor;
        }
        let elapsed = began.elapsed().as_secs_f64().max(0.001);
        status.rate = (status.done - done_before) as f64 / elapsed;
        let left = status.total.saturating_sub(status.done + status.failed);
        status.eta_s = (status.rate > 0.0).then(|| left as f64 / status.rate);
        status.updated_ms = now_ms();
        self.save(status).await?;
        let mut conn = self.conn.clone();
        Ok(replays::cancel_requested(&mut conn, &self.prefix, &status.id).await?)
    }

    async fn publish(
        &self,
        topic: &str,
        batch: Vec<(Envelope, Option<crate::traces::Started>)>,
    ) -> Result<(), ReplayError> {
        self.publisher
            .publish_envelopes(topic, batch)
            .await
            .map(|_| ())
            .map_err(|e| ReplayError::Invalid(format!("publishing to `{topic}`: {e}")))
    }

    /// The next page after the cursor, in stored order, as envelopes.
    async fn page(
        &self,
        status: &ReplayStatus,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<Archived>, ReplayError> {
        let client = self.store.client().await?;
        let (mut clause, mut params) = Self::clause(&status.spec, from, to);
        if let Some((us, stream, partition, redis_seq)) = &status.cursor {
            let at = UNIX_EPOCH + Duration::from_micros((*us).max(0) as u64);
            params.push(Box::new(at));
            params.push(Box::new(stream.clone()));
            params.push(Box::new(*partition));
            params.push(Box::new(*redis_seq));
            let n = params.len();
            clause.push_str(&format!(
                " AND (stored_at, stream, partition, redis_seq) > (${}, ${}, ${}, ${})",
                n - 3,
                n - 2,
                n - 1,
                n
            ));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client
            .query(
                &format!(
                    "SELECT {ARCHIVED_COLUMNS} FROM evr_events WHERE {clause}
                      ORDER BY stored_at, stream, partition, redis_seq LIMIT {PAGE}"
                ),
                &refs,
            )
            .await
            .map_err(EventStoreError::from)?;
        let ring = self.store.ring_of(&rows, 18, 19).await?;
        Ok(rows.iter().map(|row| row_envelope(row, &ring)).collect())
    }
}

/// The events waiting to go to a subscription as one request, and their keys: one event of
/// a key a request, so that an event tried again never goes after a later one of its key.
struct Sending {
    entries: Vec<Stored>,
    keys: HashSet<String>,
    size: usize,
}

impl Sending {
    /// Requests of up to `size` events.
    fn new(size: usize) -> Self {
        Self {
            entries: Vec::with_capacity(size),
            keys: HashSet::new(),
            size: size.max(1),
        }
    }

    /// Whether what waits must be sent before an event of `key` joins it.
    fn must_send_before(&self, key: &str) -> bool {
        self.entries.len() >= self.size || (!key.is_empty() && self.keys.contains(key))
    }

    fn push(&mut self, key: String, entry: Stored) {
        self.keys.insert(key);
        self.entries.push(entry);
    }

    /// What waits, leaving it empty.
    fn take(&mut self) -> Vec<Stored> {
        self.keys.clear();
        std::mem::take(&mut self.entries)
    }
}
