//! A worker shard of one subscription: per-key FIFO lanes (one event of a key in flight at
//! a time under `ordering = "key"`) and the task loop that drives them, composed of parts
//! that each own their state: the retry timers (`timers`), the sequence gate of
//! `ordering = "sequence"` (`gate`, carried out in `sequence`), the handoff tracking
//! (`delivery::drain`) and request building (`request`). Sending and what each reply does are in
//! `send`, the retry verdict on each event's outcome in `verdict`.

mod gate;
mod record;
mod request;
mod send;
mod sequence;
mod timers;
mod verdict;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};

use self::gate::SequenceGate;
use self::request::RequestBuilder;
use self::timers::RetryTimers;
use super::drain::HandoffTracker;
use super::handoff::Handoffs;
use super::lanes::Lanes;
use super::stats::SubscriptionStats;
use super::subscription::Subscription;
use super::transport::{Reply, Subscriber};
use crate::health::Part;
use crate::metrics::{catalogue, HistogramId, Metrics};
use crate::model::clock::now_ms;
use crate::model::dead_letter::Failure;
use crate::model::subscription::Ordering;
use crate::store::acks::{AckOp, Barrier};
use crate::store::lease::{HandoffBoard, Owned};

/// One event on its way to a subscriber.
#[derive(Debug)]
pub struct Delivery {
    /// Partition key it was read from.
    pub partition: Arc<str>,
    /// Stream entry id.
    pub id: String,
    /// Its lane: the entity key, or a key of its own when order does not matter.
    pub lane: Arc<str>,
    /// `event_id`.
    pub event_id: String,
    /// Topic.
    pub topic: String,
    /// W3C trace context.
    pub traceparent: String,
    /// When evrouter received it (µs since the epoch).
    pub received_us: u64,
    /// `metadata.sequence`, when the event has one.
    pub sequence: Option<u64>,
    /// The body to send: the event's JSON (a CloudEvent or raw bytes for a Dapr app).
    pub payload: Bytes,
    /// The subscriber's route for this event (a Dapr app's path, from its rules).
    pub route: Option<Arc<str>>,
    /// The body's content type when not `application/json`.
    pub content_type: Option<Arc<str>>,
    /// When the event expires (µs since the epoch): not sent after that.
    pub expires_us: Option<u64>,
    /// The stored entry (for the DLQ).
    pub raw: Bytes,
    /// Attempts made so far (including ones before a takeover).
    pub attempts: u32,
    /// First attempt on this instance, ms since the epoch.
    pub first_attempt_ms: u64,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last error.
    pub last_error: Option<String>,
    /// Its share of the subscription's read-ahead bytes, given back when it is dropped.
    pub _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What every shard of a subscription shares.
#[derive(Clone)]
pub struct ShardContext {
    /// The subscription.
    pub sub: Arc<Subscription>,
    /// How its subscriber is called.
    pub subscriber: Arc<dyn Subscriber>,
    /// Where acks and dead letters go.
    pub acks: mpsc::Sender<AckOp>,
    /// Read-ahead budget: one permit per event held.
    pub permits: Arc<Semaphore>,
    /// The partitions this instance holds.
    pub owned: watch::Receiver<Arc<Owned>>,
    /// Counters.
    pub stats: Arc<SubscriptionStats>,
    /// How many shards the subscription runs (they share its reorder limits).
    pub shards: usize,
    /// For reading back the next expected sequence numbers kept in Redis.
    pub store: redis::aio::ConnectionManager,
    /// Where a shard confirms that a partition being handed over is done with.
    pub handoffs: Arc<Handoffs>,
    /// Webhook request histograms.
    pub requests: Arc<RequestMetrics>,
    /// Where spans of attempts and dead-lettering go.
    pub tracer: crate::traces::Tracer,
    /// The subscription's name, shared by every outcome recorded.
    pub name: Arc<str>,
    /// Where outcomes are recorded.
    pub outcomes: Option<Arc<dyn crate::delivery::outcomes::OutcomeLog>>,
}

/// The histograms of a subscription's webhook requests: time per endpoint (by the
/// endpoint's index in the spec), events per request.
#[derive(Debug)]
pub struct RequestMetrics {
    duration: Vec<HistogramId>,
    size: HistogramId,
}

impl RequestMetrics {
    /// Registers them for `subscription` and its `endpoints`.
    pub fn new(metrics: &Metrics, subscription: &str, endpoints: &[String]) -> Self {
        let duration = endpoints
            .iter()
            .map(|url| {
                let endpoint = crate::metrics::endpoint_label(url);
                metrics.histogram(
                    &catalogue::WEBHOOK_REQUEST_SECONDS,
                    &[subscription, &endpoint],
                )
            })
            .collect();
        let size = metrics.histogram(&catalogue::WEBHOOK_REQUEST_EVENTS, &[subscription]);
        Self { duration, size }
    }

    /// Records one request to endpoint `index` that carried `events`.
    pub fn record(&self, index: usize, started: Instant, events: usize) {
        if let Some(id) = self.duration.get(index) {
            id.record(started.elapsed().as_micros() as u64);
        }
        self.size.record(events as u64);
    }
}

struct Finished {
    lanes: Vec<Arc<str>>,
    /// The partition of each event sent.
    partitions: Vec<Arc<str>>,
    reply: Reply,
}

/// An event's place, as the shard's set of held events keys it: its partition and its
/// entry id as numbers (an id is `ms-seq`), so that a lookup allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HeldKey(Arc<str>, u64, u64);

impl HeldKey {
    fn of(delivery: &Delivery) -> Self {
        let (ms, seq) = delivery.id.split_once('-').unwrap_or((&delivery.id, "0"));
        Self(
            delivery.partition.clone(),
            ms.parse().unwrap_or(0),
            seq.parse().unwrap_or(0),
        )
    }
}

/// The shard task's state.
pub struct Shard {
    ctx: ShardContext,
    rx: mpsc::Receiver<Delivery>,
    stop: watch::Receiver<bool>,
    lanes: Lanes<Delivery>,
    /// Every event in the lanes, by partition and entry id.
    held: HashSet<HeldKey, foldhash::fast::RandomState>,
    ready: VecDeque<Arc<str>>,
    /// Ready lanes of partitions whose lease lapsed locally, waiting for its renewal.
    paused: Vec<Arc<str>>,
    /// Lanes put back until a deadline.
    timers: RetryTimers,
    /// `ordering = "sequence"`: events wait here until their turn, then go to the lanes.
    gate: Option<SequenceGate>,
    /// What this shard owes partitions being handed over.
    handoff: HandoffTracker,
    /// Which lanes go together, and their requests.
    requests: RequestBuilder,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    in_flight: usize,
    stopping: bool,
}

impl Shard {
    /// A shard reading deliveries from `rx` until `stop` turns true.
    pub fn new(
        ctx: ShardContext,
        rx: mpsc::Receiver<Delivery>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let gate = (ctx.sub.spec.ordering == Ordering::Sequence).then(|| {
            let limits = gate::reorder_limits(&ctx.sub, ctx.shards);
            SequenceGate::new(&ctx.sub, limits, ctx.stats.clone())
        });
        let handoff = HandoffTracker::new(ctx.handoffs.join());
        let requests = RequestBuilder::new(&ctx.sub.spec, ctx.tracer.clone());
        Self {
            ctx,
            rx,
            stop,
            lanes: Lanes::default(),
            held: HashSet::default(),
            ready: VecDeque::new(),
            paused: Vec::new(),
            timers: RetryTimers::default(),
            gate,
            handoff,
            requests,
            finished_tx,
            finished_rx,
            in_flight: 0,
            stopping: false,
        }
    }

    /// Runs until stopped and every request in flight has been answered. Events not yet
    /// delivered stay pending in Redis for whoever reads the partition next. Each turn of
    /// the loop is a round of the shard's watched part: a turn that panics is caught,
    /// logged and counted, and the loop goes on after the part's backoff.
    pub async fn run(mut self, part: Arc<Part>) {
        while let Some(true) | None = part.round(self.turn()).await {}
    }

    /// One turn: sends what is ready, then waits for the next thing to happen. False once
    /// the shard has stopped.
    async fn turn(&mut self) -> bool {
        {
            // Before anything else: an event read under a new tenure must meet the key
            // state of that tenure, not one from before a lapse.
            if self.ctx.owned.has_changed().unwrap_or(false) {
                self.on_owned_changed();
            }
            self.dispatch();
            self.restore_next_batch();
            if self.stopping && self.in_flight == 0 {
                self.leave_gauges();
                self.leave_handoffs();
                return false;
            }
            let wake = [
                self.timers.next_deadline(),
                self.requests.deadline(),
                self.gate.as_ref().and_then(SequenceGate::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                Some(finished) = self.finished_rx.recv() => {
                    self.on_finished(finished);
                    self.confirm_drained();
                }
                Some(restored) = restored(&mut self.gate) => self.on_restored(restored),
                delivery = self.rx.recv(), if !self.stopping => match delivery {
                    Some(delivery) => self.on_delivery(delivery),
                    None => self.stopping = true,
                },
                _ = self.stop.changed(), if !self.stopping => self.stopping = true,
                // Polled only when nothing else is ready (registering for the change on
                // every turn costs a shared lock); the loop's first step catches up.
                changed = self.ctx.owned.changed() => match changed {
                    Ok(()) => self.on_owned_changed(),
                    Err(_) => self.stopping = true,
                },
                _ = sleep_until(wake), if wake.is_some() => self.on_wake(),
            }
        }
        true
    }

    /// The partitions held changed: sequence state follows, and handoffs are confirmed.
    fn on_owned_changed(&mut self) {
        if self.gate.is_some() {
            self.on_ownership_change();
        } else {
            self.ctx.owned.borrow_and_update();
        }
        self.resume_paused();
        self.confirm_drained();
    }

    /// Lanes paused by a lapse go on once their lease is renewed, and are let go once it
    /// is lost.
    fn resume_paused(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let owned = self.ctx.owned.borrow().clone();
        for lane in std::mem::take(&mut self.paused) {
            let Some(head) = self.lanes.head(&lane) else {
                continue;
            };
            if owned.holds(&head.partition) {
                self.ready.push_back(lane);
            } else if owned.lapsed(&head.partition) {
                self.paused.push(lane);
            } else {
                self.abandon(&lane);
            }
        }
    }

    fn on_delivery(&mut self, delivery: Delivery) {
        // A partition dropped and regained is reclaimed whole, including entries this
        // shard still holds: those must not be queued a second time.
        if !self.held.insert(HeldKey::of(&delivery)) {
            self.ctx.permits.add_permits(1);
            self.ctx
                .stats
                .in_flight
                .fetch_sub(1, AtomicOrdering::Relaxed);
            return;
        }
        if self.gate.is_some() {
            self.offer(delivery);
        } else {
            self.enqueue(delivery);
        }
    }

    /// Puts an event at the back of its lane.
    fn enqueue(&mut self, delivery: Delivery) {
        let lane = delivery.lane.clone();
        if self.lanes.push(lane.clone(), delivery) {
            self.ready.push_back(lane);
        }
    }

    /// Finishes an event that never reached a lane: acked, or dead-lettered with `reason`.
    fn settle(&mut self, delivery: Delivery, dead_letter: Option<(&str, String)>) {
        self.held.remove(&HeldKey::of(&delivery));
        self.ctx
            .stats
            .in_flight
            .fetch_sub(1, AtomicOrdering::Relaxed);
        let op = match dead_letter {
            Some((reason, note)) => {
                SubscriptionStats::bump(&self.ctx.stats.dead_lettered);
                AckOp::DeadLetter {
                    partition: delivery.partition,
                    id: delivery.id,
                    raw: delivery.raw,
                    failure: Failure {
                        reason: reason.to_string(),
                        last_status: None,
                        last_error: Some(note),
                        attempts: delivery.attempts,
                        first_attempt_ms: now_ms(),
                        last_attempt_ms: now_ms(),
                    },
                }
            }
            None => AckOp::Ack {
                partition: delivery.partition,
                id: delivery.id,
            },
        };
        self.queue_ack(op);
    }

    fn on_wake(&mut self) {
        let now = Instant::now();
        for lane in self.timers.pop_due(now) {
            if self.lanes.contains(&lane) {
                self.ready.push_back(lane);
            }
        }
        if let Some(gate) = self.gate.as_mut() {
            let steps = gate.expire(now);
            self.carry_out(steps);
        }
    }

    fn queue_ack(&self, op: AckOp) {
        // The queue has room for every permit, so it is never full; it is closed only when
        // the acker has stopped, and then the entry stays pending and is delivered again.
        if let Err(err) = self.ctx.acks.try_send(op) {
            tracing::warn!(error = %err, "ack not queued; the event will be delivered again");
            self.ctx.permits.add_permits(1);
        }
    }

    /// Removes the head of `lane` (acking it when `ack`; a dead letter is queued by the
    /// caller) and readies the next event of the lane.
    fn finish(&mut self, lane: &Arc<str>, ack: bool) {
        let Some((head, more)) = self.lanes.pop(lane) else {
            return;
        };
        self.held.remove(&HeldKey::of(&head));
        let sequence = head.sequence;
        // The acker frees the event's permit once its ack (or dead letter) is written.
        if ack {
            self.queue_ack(AckOp::Ack {
                partition: head.partition,
                id: head.id,
            });
        }
        if !more {
            self.advance_if_idle(lane);
        } else if let Some(done) = sequence {
            // Every event of the key up to this one is done: a new owner after a handoff
            // or a crash goes on from the next, not from the last time the lane was empty.
            self.advance_past(lane, done);
        }
        self.ctx
            .stats
            .in_flight
            .fetch_sub(1, AtomicOrdering::Relaxed);
        if more {
            self.ready.push_back(lane.clone());
        }
    }

    /// Confirms every partition being handed over that this shard has nothing of in
    /// flight (once its acks so far are written).
    fn confirm_drained(&mut self) {
        let owned = self.ctx.owned.borrow().clone();
        for partition in self.handoff.newly_drained(&*owned) {
            let handoffs = self.ctx.handoffs.clone();
            let shard = self.handoff.id();
            self.after_acks(Box::new(move || handoffs.confirm(&partition, shard)));
        }
    }

    /// The shard stops with nothing in flight: it owes no handoff once its acks are
    /// written.
    fn leave_handoffs(&mut self) {
        let handoffs = self.ctx.handoffs.clone();
        let shard = self.handoff.id();
        self.after_acks(Box::new(move || handoffs.leave(shard)));
    }

    /// Runs `then` once the acks queued so far are written (at once if the acker is gone).
    fn after_acks(&self, then: Box<dyn FnOnce() + Send + Sync>) {
        if let Err(err) = self.ctx.acks.try_send(AckOp::Barrier(Barrier(then))) {
            if let AckOp::Barrier(Barrier(then)) = err.into_inner() {
                then();
            }
        }
    }
}

/// The next stored sequence numbers read back, when the shard has a sequence gate.
async fn restored(gate: &mut Option<SequenceGate>) -> Option<Vec<gate::Restored>> {
    match gate {
        Some(gate) => gate.restored().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An event of `lane` (`partition \u{1f} key`, or a bare name, its partition then
    /// `evr:{order.0}`), numbered `sequence`, its entry id `1-<lane>`.
    pub(crate) fn delivery(lane: &str, sequence: Option<u64>) -> Delivery {
        let partition = lane
            .split_once('\u{1f}')
            .map_or("evr:{order.0}", |(partition, _)| partition);
        Delivery {
            partition: Arc::from(partition),
            id: format!("1-{lane}"),
            lane: Arc::from(lane),
            event_id: format!("event-{lane}"),
            topic: "order.created".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            received_us: 1,
            sequence,
            payload: Bytes::from_static(b"{}"),
            route: None,
            content_type: None,
            expires_us: None,
            raw: Bytes::new(),
            attempts: 0,
            first_attempt_ms: 0,
            last_status: None,
            last_error: None,
            _bytes: None,
        }
    }
}
