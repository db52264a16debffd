//! Sending in a shard: ready lanes go out (within the in-flight limit, skipping lanes
//! whose partition moved or whose head expired, waiting while no endpoint takes a
//! request) as the requests the request builder makes, and the verdict on each event of a
//! reply is carried out.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

use super::request::{finish_attempt, Built};
use super::verdict::Verdict;
use super::{Finished, HeldKey, Shard};
use crate::delivery::outcomes::Fate;
use crate::delivery::stats::SubscriptionStats;
use crate::delivery::transport::Forwarded;
use crate::model::clock::{now_ms, now_us};
use crate::model::dead_letter::Failure;
use crate::model::trace::TraceContext;
use crate::store::acks::AckOp;
use crate::traces::{Kind, Span};

impl Shard {
    /// Sends what is ready, within the in-flight limit and while an endpoint is usable.
    pub(super) fn dispatch(&mut self) {
        fail::fail_point!("shard-dispatch");
        let sub = self.ctx.sub.clone();
        let spec = &sub.spec;
        while !self.stopping && !self.ready.is_empty() {
            if self.in_flight >= spec.max_in_flight {
                return;
            }
            if self.requests.wait_for_more(self.ready.len(), Instant::now) {
                return;
            }
            let lanes = self.take_ready(self.requests.per_request());
            let lanes = self.drop_expired(lanes);
            if lanes.is_empty() {
                continue;
            }
            if let Some(until) = self.ctx.subscriber.paused_until() {
                // Not an attempt: the lanes wait for the subscriber to take events again.
                for lane in lanes {
                    self.timers.insert(until, lane);
                }
                continue;
            }
            let endpoint = match self.ctx.subscriber.pick() {
                Ok(endpoint) => endpoint,
                Err(retry_at) => {
                    // No endpoint takes a request now (open, probing, or a degraded one's
                    // allowance used up). Not an attempt: the lanes wait for the next one
                    // it lets through, their attempts left as they were, so that no event
                    // is dead-lettered for a breaker rather than for its own answers.
                    let cooldown = std::time::Duration::from_millis(spec.breaker.cooldown_ms);
                    let until = retry_at.unwrap_or_else(|| Instant::now() + cooldown);
                    for lane in lanes {
                        self.wait_for_endpoint(lane, until);
                    }
                    continue;
                }
            };
            self.requests.stop_waiting();
            self.send(lanes, endpoint);
        }
        if self.ready.is_empty() {
            // Nothing waits to fill a request (the lanes were sent, paused, failed fast or
            // let go): a deadline left behind would wake the shard in a loop.
            self.requests.stop_waiting();
        }
    }

    /// Acks the lanes' heads whose time to live passed while they waited (retries, order)
    /// and returns the others.
    pub(super) fn drop_expired(&mut self, lanes: Vec<Arc<str>>) -> Vec<Arc<str>> {
        let now = now_us();
        let mut live = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let expired = self
                .lanes
                .head(&lane)
                .and_then(|h| h.expires_us)
                .is_some_and(|at| at <= now);
            if expired {
                SubscriptionStats::bump(&self.ctx.stats.expired);
                self.record_outcome(&lane, Fate::Expired, None, None);
                self.finish(&lane, true);
            } else {
                live.push(lane);
            }
        }
        live
    }

    /// Pops up to `n` ready lanes whose partition this instance still holds.
    pub(super) fn take_ready(&mut self, n: usize) -> Vec<Arc<str>> {
        let owned = self.ctx.owned.borrow().clone();
        let now = std::time::Instant::now();
        let mut lanes = Vec::with_capacity(n);
        while lanes.len() < n {
            let Some(lane) = self.ready.pop_front() else {
                break;
            };
            let Some(head) = self.lanes.head(&lane) else {
                continue;
            };
            if !owned.holds_at(&head.partition, now) {
                if owned.lapsed(&head.partition) {
                    // Not renewed in time: wait for the keeper's next round, which
                    // renews it (the lane goes on) or finds it lost (it is let go).
                    self.paused.push(lane);
                } else {
                    self.abandon(&lane);
                }
                continue;
            }
            lanes.push(lane);
        }
        lanes
    }

    /// Forgets a lane whose partition moved to another instance: its events stay pending
    /// in Redis and the new owner delivers them.
    pub(super) fn abandon(&mut self, lane: &Arc<str>) {
        // The key's sequence state goes too: its next number moved past the events
        // dropped here, which will be read again.
        if let Some(gate) = self.gate.as_mut() {
            let dropped = gate.forget_lane(lane);
            self.release_dropped(dropped);
        }
        let n = self.forget_lane(lane);
        if n > 0 {
            self.ctx.permits.add_permits(n);
            self.ctx
                .stats
                .in_flight
                .fetch_sub(n as u64, AtomicOrdering::Relaxed);
        }
    }

    /// Removes a lane and forgets its entries; returns how many there were.
    pub(super) fn forget_lane(&mut self, lane: &Arc<str>) -> usize {
        let removed = self.lanes.remove_all(lane);
        for delivery in &removed {
            self.held.remove(&HeldKey::of(delivery));
        }
        removed.len()
    }

    /// Sends the heads of `lanes` to `endpoint` in one request; its reply comes back as
    /// [`Finished`].
    fn send(&mut self, lanes: Vec<Arc<str>>, endpoint: usize) {
        let first_ms = now_ms();
        let Built {
            lanes,
            request,
            span,
            other_routes,
        } = self
            .requests
            .build(lanes, &mut self.lanes, endpoint, first_ms);
        for lane in other_routes.into_iter().rev() {
            self.ready.push_front(lane);
        }
        let partitions: Vec<Arc<str>> = request
            .items
            .iter()
            .map(|item| item.partition.clone())
            .collect();
        let sending = self.ctx.subscriber.send(endpoint, request);
        let done = self.finished_tx.clone();
        self.in_flight += 1;
        self.handoff.sent(&partitions);
        let requests = self.ctx.requests.clone();
        let tracer = self.ctx.tracer.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = sending.await;
            requests.record(endpoint, started, partitions.len());
            if let Some(span) = span {
                tracer.record(finish_attempt(span, &reply));
            }
            let _ = done.send(Finished {
                lanes,
                partitions,
                reply,
            });
        });
    }

    pub(super) fn on_finished(&mut self, finished: Finished) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let spec = self.ctx.sub.spec.clone();
        let Finished {
            lanes,
            partitions,
            reply,
        } = finished;
        self.handoff.returned(&partitions);
        for (lane, outcome) in lanes.into_iter().zip(reply.outcomes) {
            let Some(head) = self.lanes.head_mut(&lane) else {
                continue;
            };
            match Verdict::of(&outcome, head.attempts, &spec, fastrand::f64()) {
                Verdict::Delivered => {
                    SubscriptionStats::bump(&self.ctx.stats.delivered);
                    self.ctx
                        .stats
                        .record_latency(now_us().saturating_sub(head.received_us));
                    self.record_outcome(&lane, Fate::Delivered, reply.status, None);
                    self.finish(&lane, true);
                }
                Verdict::Dropped(reason) => {
                    tracing::info!(subscription = %spec.name, event_id = %head.event_id, correlation_id = %correlation_id(&head.raw), trace_id = %crate::logs::trace_id(&head.traceparent), %reason, "event dropped");
                    SubscriptionStats::bump(&self.ctx.stats.dropped);
                    self.record_outcome(&lane, Fate::Dropped, reply.status, Some(&reason));
                    self.finish(&lane, true);
                }
                Verdict::Retry { after, reason } => {
                    head.last_status = reply.status.or(head.last_status);
                    head.last_error = Some(reason);
                    SubscriptionStats::bump(&self.ctx.stats.retried);
                    self.record_outcome(&lane, Fate::Retried, reply.status, None);
                    self.timers.insert(Instant::now() + after, lane);
                }
                Verdict::Exhausted { reason } => {
                    head.last_status = reply.status.or(head.last_status);
                    head.last_error = Some(reason);
                    self.exhausted(&lane);
                }
            }
        }
    }

    /// Puts `lane` back until `until`, when an endpoint lets a request through again, in
    /// the timers' order for lanes waiting for an endpoint.
    fn wait_for_endpoint(&mut self, lane: Arc<str>, until: Instant) {
        let attempts = self.lanes.head(&lane).map_or(0, |h| h.attempts);
        let max = self.ctx.sub.spec.max_attempts;
        self.timers.wait_for_endpoint(lane, until, attempts, max);
    }

    /// The head of `lane` used its last attempt: to the DLQ (ack and DLQ in one step), or
    /// dropped when the subscription keeps no DLQ; offered to a dead-letter topic too.
    fn exhausted(&mut self, lane: &Arc<str>) {
        let Some(head) = self.lanes.head(lane) else {
            return;
        };
        match self
            .ctx
            .subscriber
            .forward(&head.raw, &head.payload, head.content_type.as_ref())
        {
            Forwarded::Queued => SubscriptionStats::bump(&self.ctx.stats.dead_letter_topic),
            Forwarded::QueueFull => {
                tracing::warn!(event_id = %head.event_id, "dead-letter topic queue full; the event is in the DLQ only")
            }
            Forwarded::NotAsked => {}
        }
        if self.ctx.sub.spec.dead_letter {
            let op = AckOp::DeadLetter {
                partition: head.partition.clone(),
                id: head.id.clone(),
                raw: head.raw.clone(),
                failure: Failure {
                    reason: "max_attempts_exceeded".into(),
                    last_status: head.last_status,
                    last_error: head.last_error.clone(),
                    attempts: head.attempts,
                    first_attempt_ms: head.first_attempt_ms,
                    last_attempt_ms: now_ms(),
                },
            };
            SubscriptionStats::bump(&self.ctx.stats.dead_lettered);
            self.dead_letter_span(lane);
            self.record_outcome(lane, Fate::DeadLettered, head.last_status, None);
            tracing::info!(
                subscription = %self.ctx.sub.spec.name,
                event_id = %head.event_id,
                correlation_id = %correlation_id(&head.raw),
                trace_id = %crate::logs::trace_id(&head.traceparent),
                attempts = head.attempts,
                last_status = head.last_status.unwrap_or(0),
                "event dead-lettered"
            );
            self.queue_ack(op);
            self.finish(lane, false);
        } else {
            SubscriptionStats::bump(&self.ctx.stats.dropped);
            tracing::info!(
                subscription = %self.ctx.sub.spec.name,
                event_id = %head.event_id,
                correlation_id = %correlation_id(&head.raw),
                trace_id = %crate::logs::trace_id(&head.traceparent),
                attempts = head.attempts,
                "event dropped: attempts exhausted and the subscription keeps no DLQ"
            );
            self.record_outcome(lane, Fate::Dropped, head.last_status, None);
            self.finish(lane, true);
        }
    }

    /// The span of dead-lettering the head of `lane`: a child of its stored context, from
    /// its first attempt here to now.
    fn dead_letter_span(&self, lane: &Arc<str>) {
        if !self.ctx.tracer.enabled() {
            return;
        }
        let Some(head) = self.lanes.head(lane) else {
            return;
        };
        let Some(stored) = TraceContext::parse(&head.traceparent).filter(TraceContext::sampled)
        else {
            return;
        };
        let name = &self.ctx.sub.spec.name;
        let mut attributes = vec![
            ("messaging.system", "evrouter".into()),
            ("messaging.consumer.group.name", name.clone().into()),
            ("messaging.message.id", head.event_id.clone().into()),
            ("evrouter.attempts", i64::from(head.attempts).into()),
            ("evrouter.reason", "max_attempts_exceeded".into()),
        ];
        if let Some(status) = head.last_status {
            attributes.push(("http.response.status_code", i64::from(status).into()));
        }
        let now = now_us();
        self.ctx.tracer.record(Span {
            context: stored.child(),
            parent: Some(stored.span_id),
            name: format!("dead-letter {name}"),
            kind: Kind::Internal,
            start_us: head.first_attempt_ms.saturating_mul(1000).min(now),
            end_us: now,
            attributes,
            links: Vec::new(),
            error: Some(format!(
                "max attempts exceeded: {}",
                head.last_error.as_deref().unwrap_or("no answer")
            )),
        });
    }
}

/// The correlation id of a stored entry, read only for the rare log line that names it.
fn correlation_id(raw: &bytes::Bytes) -> String {
    crate::model::envelope::Envelope::decode(raw)
        .map(|e| e.correlation_id)
        .unwrap_or_default()
}
