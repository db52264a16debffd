//! From a read entry to a shard: decode the envelope, ack at once what the subscription
//! does not want, and send the rest to the shard of its lane.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use xxhash_rust::xxh3::xxh3_64;

use super::lanes::{lane_name, KEY_SEPARATOR};
use super::shard::Delivery;
use super::stats::SubscriptionStats;
use super::subscription::Subscription;
use super::transport::Subscriber;
use crate::model::clock::now_us;
use crate::model::envelope::{Envelope, EnvelopeError, ENVELOPE_VERSION};
use crate::model::subscription::Ordering;
use crate::store::acks::AckOp;
use crate::store::reader::{Dispatch, ReadEntry};

/// Sends a subscription's entries to their shards.
#[derive(Clone)]
pub struct ShardDispatch {
    sub: Arc<Subscription>,
    subscriber: Arc<dyn Subscriber>,
    shards: Vec<mpsc::Sender<Delivery>>,
    acks: mpsc::Sender<AckOp>,
    permits: Arc<Semaphore>,
    /// The read-ahead budget in KiB: an event holds its share until it is done with.
    bytes: Arc<Semaphore>,
    /// The whole budget, in KiB.
    bytes_total: u64,
    stats: Arc<SubscriptionStats>,
    /// Where each event's lane name is written before it is shared.
    lane_buf: String,
}

impl ShardDispatch {
    /// A dispatcher over `shards`.
    pub fn new(
        sub: Arc<Subscription>,
        subscriber: Arc<dyn Subscriber>,
        shards: Vec<mpsc::Sender<Delivery>>,
        acks: mpsc::Sender<AckOp>,
        permits: Arc<Semaphore>,
        stats: Arc<SubscriptionStats>,
    ) -> Self {
        let kib = (sub.spec.max_in_flight_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS as u64);
        let bytes = Arc::new(Semaphore::new(kib as usize));
        Self {
            sub,
            subscriber,
            shards,
            acks,
            permits,
            bytes,
            bytes_total: kib,
            stats,
            lane_buf: String::new(),
        }
    }

    /// Acks an entry that is not delivered (its permit is freed by the acker).
    fn skip(&self, partition: Arc<str>, id: String) {
        if self.acks.try_send(AckOp::Ack { partition, id }).is_err() {
            self.permits.add_permits(1);
        }
    }

    /// Acks an entry that cannot be read (corrupt), with a warning.
    fn skip_unreadable(&self, entry: ReadEntry, err: EnvelopeError) {
        tracing::warn!(partition = %entry.partition, id = %entry.id, error = %err, "unreadable entry acked and skipped");
        self.skip(entry.partition, entry.id);
    }
}

impl Dispatch for ShardDispatch {
    async fn dispatch(&mut self, entry: ReadEntry) {
        // A copy of its own: a slice of the read buffer would keep all of it alive while
        // the event waits (retries, reorder buffer). The payload is a slice of this copy.
        // Laid out so that the envelope is read where it lies, not copied again.
        let raw = crate::model::envelope::aligned_copy(&entry.raw);
        let view = match Envelope::view(&raw) {
            Ok(view) => view,
            // Written by a newer evrouter: left pending for an instance that reads it,
            // never acked unread.
            Err(EnvelopeError::Version(version)) if version > ENVELOPE_VERSION => {
                tracing::warn!(partition = %entry.partition, id = %entry.id, version, "entry written by a newer evrouter left pending");
                self.permits.add_permits(1);
                return;
            }
            Err(err) => return self.skip_unreadable(entry, err),
        };
        if !self.sub.matches(&view.topic) {
            SubscriptionStats::bump(&self.stats.unmatched);
            self.skip(entry.partition, entry.id);
            return;
        }
        let lane: Arc<str> = match self.sub.spec.ordering {
            // A key's order is kept within its partition (a key seen in two streams is two
            // lanes), so losing one partition never holds back another's events.
            Ordering::Key | Ordering::Sequence => lane_name(
                &mut self.lane_buf,
                &entry.partition,
                KEY_SEPARATOR,
                &view.key,
            ),
            Ordering::None => lane_name(&mut self.lane_buf, &entry.partition, '/', &entry.id),
        };
        if view.expires_us.is_some_and(|at| at <= now_us()) {
            SubscriptionStats::bump(&self.stats.expired);
            self.skip(entry.partition, entry.id);
            return;
        }
        let presented = match self.subscriber.present(&raw, &view) {
            Ok(Some(presented)) => presented,
            Ok(None) => {
                SubscriptionStats::bump(&self.stats.unrouted);
                self.skip(entry.partition, entry.id);
                return;
            }
            Err(err) => return self.skip_unreadable(entry, err),
        };
        // Within the byte budget too: reading waits while the events held are too large.
        let units = ((raw.len() / 1024) as u64 + 1).min(self.bytes_total) as u32;
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(units).await else {
            self.permits.add_permits(1);
            return;
        };
        let shard = (xxh3_64(lane.as_bytes()) % self.shards.len().max(1) as u64) as usize;
        let delivery = Delivery {
            partition: entry.partition,
            id: entry.id,
            lane,
            event_id: view.event_id,
            topic: view.topic,
            traceparent: view.traceparent,
            received_us: view.received_us,
            sequence: view.sequence,
            payload: presented.body,
            route: presented.route,
            content_type: presented.content_type,
            expires_us: view.expires_us,
            raw,
            attempts: entry.delivered_before,
            first_attempt_ms: 0,
            last_status: None,
            last_error: None,
            _bytes: Some(bytes),
        };
        self.stats.in_flight.fetch_add(1, AtomicOrdering::Relaxed);
        if self.shards[shard].send(delivery).await.is_err() {
            // The shard has stopped (shutdown): the entry stays pending in Redis.
            self.stats.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
            self.permits.add_permits(1);
        }
    }
}
