//! Sending in a shard: which ready lanes go out together (within the in-flight limit, the
//! bulk size and wait, one route a request, skipping lanes whose partition moved or whose
//! head expired), and what each answer does to its events.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

use super::answer::{decide, Decision};
use super::{Finished, Shard};
use crate::delivery::outcomes::Fate;
use crate::delivery::stats::SubscriptionStats;
use crate::delivery::transport::{Forwarded, Headers, Item, Outcome, Reply, Request};
use crate::model::clock::{now_ms, now_us};
use crate::model::dead_letter::Failure;
use crate::model::subscription::DeliveryMode;
use crate::model::trace::TraceContext;
use crate::store::acks::AckOp;
use crate::traces::{Kind, Span};

impl Shard {
    /// Sends what is ready, within the in-flight limit and while an endpoint is usable.
    pub(super) fn dispatch(&mut self) {
        fail::fail_point!("shard-dispatch");
        let sub = self.ctx.sub.clone();
        let spec = &sub.spec;
        let bulk = spec.mode == DeliveryMode::Bulk;
        let per_request = if bulk { spec.bulk.max_events } else { 1 };
        while !self.stopping && !self.ready.is_empty() {
            if self.in_flight >= spec.max_in_flight {
                return;
            }
            if bulk && self.ready.len() < per_request {
                let now = Instant::now();
                match self.bulk_deadline {
                    None => {
                        self.bulk_deadline =
                            Some(now + std::time::Duration::from_millis(spec.bulk.max_wait_ms));
                        return;
                    }
                    Some(deadline) if now < deadline => return,
                    Some(_) => {}
                }
            }
            let lanes = self.take_ready(per_request);
            let lanes = self.drop_expired(lanes);
            if lanes.is_empty() {
                continue;
            }
            if let Some(until) = self.ctx.subscriber.paused_until() {
                // Not an attempt: the lanes wait for the subscriber to take events again.
                for lane in lanes {
                    self.timer_seq += 1;
                    self.timers.insert((until, self.timer_seq), lane);
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
            self.bulk_deadline = None;
            self.send(lanes, endpoint, bulk);
        }
        if self.ready.is_empty() {
            // Nothing waits to fill a request (the lanes were sent, paused, failed fast or
            // let go): a deadline left behind would wake the shard in a loop.
            self.bulk_deadline = None;
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
        let mut lanes = Vec::with_capacity(n);
        while lanes.len() < n {
            let Some(lane) = self.ready.pop_front() else {
                break;
            };
            let Some(head) = self.lanes.head(&lane) else {
                continue;
            };
            if !owned.holds(&head.partition) {
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
        if let Some(buffer) = self.reorder.as_mut() {
            let dropped = buffer.forget(|key| key == &**lane);
            self.restore_after_acks = true;
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
            self.held
                .remove(&(delivery.partition.clone(), delivery.id.clone()));
        }
        removed.len()
    }

    fn send(&mut self, mut lanes: Vec<Arc<str>>, endpoint: usize, bulk: bool) {
        let first_ms = now_ms();
        // Every event of one request takes the same route; the others wait for the next
        // request, in their order.
        let route = lanes
            .first()
            .and_then(|l| self.lanes.head(l))
            .and_then(|h| h.route.clone());
        if let Some(route) = &route {
            let (same, other): (Vec<_>, Vec<_>) = lanes.into_iter().partition(|l| {
                self.lanes
                    .head(l)
                    .is_some_and(|h| h.route.as_deref() == Some(&**route))
            });
            for lane in other.into_iter().rev() {
                self.ready.push_front(lane);
            }
            lanes = same;
        }
        // One outcome comes back per item: keep only lanes with an event to send, so that
        // lanes and items stay aligned.
        lanes.retain(|lane| self.lanes.head(lane).is_some());
        let mut items = Vec::with_capacity(lanes.len());
        let mut headers = None;
        let mut attempt = 0;
        let mut traceparent = None;
        let mut stored_contexts = Vec::new();
        let recording = self.ctx.tracer.enabled();
        for lane in &lanes {
            if let Some(head) = self.lanes.head_mut(lane) {
                head.attempts += 1;
                if head.first_attempt_ms == 0 {
                    head.first_attempt_ms = first_ms;
                }
                attempt = attempt.max(head.attempts);
                if !bulk {
                    headers = Some(Headers {
                        event_id: head.event_id.clone(),
                        topic: head.topic.clone(),
                    });
                    // A context that cannot be read is passed on as it is.
                    traceparent = Some(head.traceparent.clone());
                }
                // A bulk request needs the events' contexts only for its span.
                if !bulk || recording {
                    if let Some(stored) = TraceContext::parse(&head.traceparent) {
                        stored_contexts.push(stored);
                    }
                }
                items.push(Item {
                    partition: head.partition.clone(),
                    id: head.id.clone(),
                    body: head.payload.clone(),
                    content_type: head.content_type.clone(),
                });
            }
        }
        let items_partitions = items.iter().map(|item| item.partition.clone()).collect();
        // The subscriber continues the trace from the attempt's own span.
        let span = self.attempt_span(bulk, &stored_contexts, &headers, endpoint, attempt);
        match (&span, stored_contexts.first()) {
            (Some(span), _) => traceparent = Some(span.context.to_traceparent()),
            (None, Some(stored)) if !bulk => traceparent = Some(stored.child().to_traceparent()),
            (None, _) => {}
        }
        let sending = self.ctx.subscriber.send(
            endpoint,
            Request {
                items,
                route,
                headers,
                attempt,
                traceparent,
                replay: false,
            },
        );
        let done = self.finished_tx.clone();
        self.in_flight += 1;
        let partitions: Vec<Arc<str>> = items_partitions;
        self.count_sending(&partitions, true);
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

    /// The span of one attempt, begun, when spans are recorded and its trace is sampled:
    /// in single mode a child of the event's stored context (so that the subscriber's
    /// span is a child of it in turn); in bulk mode a span of its own trace linked to each
    /// event's context.
    fn attempt_span(
        &self,
        bulk: bool,
        stored: &[TraceContext],
        headers: &Option<Headers>,
        endpoint: usize,
        attempt: u32,
    ) -> Option<Span> {
        if !self.ctx.tracer.enabled() {
            return None;
        }
        let events = stored.len().max(1) as i64;
        let (context, parent, links) = if bulk {
            // Linked are the events whose spans are recorded.
            let links: Vec<TraceContext> = stored.iter().filter(|c| c.sampled()).copied().collect();
            if links.is_empty() {
                return None;
            }
            (TraceContext::root(true), None, links)
        } else {
            let stored = stored.first().filter(|s| s.sampled())?;
            (stored.child(), Some(stored.span_id), Vec::new())
        };
        let spec = &self.ctx.sub.spec;
        let mut attributes = vec![
            ("messaging.system", "evrouter".into()),
            ("messaging.operation.type", "process".into()),
            ("messaging.consumer.group.name", spec.name.clone().into()),
            ("messaging.batch.message_count", events.into()),
            ("evrouter.attempt", i64::from(attempt).into()),
        ];
        if let Some(url) = spec.endpoints.get(endpoint) {
            attributes.push((
                "evrouter.endpoint",
                crate::metrics::endpoint_label(url).into(),
            ));
        }
        if let Some(headers) = headers {
            attributes.push(("messaging.message.id", headers.event_id.clone().into()));
            attributes.push(("messaging.destination.name", headers.topic.clone().into()));
        }
        Some(Span {
            context,
            parent,
            name: format!("deliver {}", spec.name),
            kind: Kind::Client,
            start_us: now_us(),
            end_us: 0,
            attributes,
            links,
            error: None,
        })
    }

    pub(super) fn on_finished(&mut self, finished: Finished) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let spec = self.ctx.sub.spec.clone();
        let Finished {
            lanes,
            partitions,
            reply,
        } = finished;
        self.count_sending(&partitions, false);
        for (lane, outcome) in lanes.into_iter().zip(reply.outcomes) {
            let Some(head) = self.lanes.head_mut(&lane) else {
                continue;
            };
            match decide(&outcome, head.attempts, &spec, fastrand::f64()) {
                Decision::Delivered => {
                    SubscriptionStats::bump(&self.ctx.stats.delivered);
                    self.ctx
                        .stats
                        .record_latency(now_us().saturating_sub(head.received_us));
                    self.record_outcome(&lane, Fate::Delivered, reply.status, None);
                    self.finish(&lane, true);
                }
                Decision::Dropped(reason) => {
                    tracing::info!(subscription = %spec.name, event_id = %head.event_id, correlation_id = %correlation_id(&head.raw), trace_id = %crate::logs::trace_id(&head.traceparent), %reason, "event dropped");
                    SubscriptionStats::bump(&self.ctx.stats.dropped);
                    self.record_outcome(&lane, Fate::Dropped, reply.status, Some(&reason));
                    self.finish(&lane, true);
                }
                Decision::Retry { after, reason } => {
                    head.last_status = reply.status.or(head.last_status);
                    head.last_error = Some(reason);
                    SubscriptionStats::bump(&self.ctx.stats.retried);
                    self.record_outcome(&lane, Fate::Retried, reply.status, None);
                    self.timer_seq += 1;
                    self.timers
                        .insert((Instant::now() + after, self.timer_seq), lane);
                }
                Decision::Exhausted { reason } => {
                    head.last_status = reply.status.or(head.last_status);
                    head.last_error = Some(reason);
                    self.exhausted(&lane);
                }
            }
        }
    }

    /// Puts `lane` back until `until`, when an endpoint lets a request through again, in
    /// this order then: lanes whose head was tried and has attempts to spare, the last tried
    /// first; then heads with one attempt left, and fresh heads, each in the order they
    /// came. A retry is what succeeds on a subscriber that fails first attempts, and
    /// successes are what grow a degraded endpoint's allowance back: heads tried in turn
    /// across many keys could fail every request of a small allowance for as long as the
    /// turn lasts. A head's last attempt waits its turn, so that a long outage does not
    /// dead-letter the events tried first one after the other.
    fn wait_for_endpoint(&mut self, lane: Arc<str>, until: Instant) {
        const LAST: u64 = 1 << 62;
        const FRESH: u64 = 1 << 63;
        self.timer_seq += 1;
        let seq = self.timer_seq;
        let max = self.ctx.sub.spec.max_attempts;
        let attempts = self.lanes.head(&lane).map_or(0, |h| h.attempts);
        let order = match attempts {
            0 => FRESH | seq,
            n if n.saturating_add(1) < max => LAST - 1 - seq,
            _ => LAST | seq,
        };
        self.timers.insert((until, order), lane);
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

/// An attempt's span, ended by its reply: the answer's status, and an error unless every
/// event was delivered.
fn finish_attempt(mut span: Span, reply: &Reply) -> Span {
    span.end_us = now_us();
    if let Some(status) = reply.status {
        span.attributes
            .push(("http.response.status_code", i64::from(status).into()));
    }
    let failed: Vec<&Outcome> = reply
        .outcomes
        .iter()
        .filter(|o| **o != Outcome::Delivered)
        .collect();
    span.error = match (failed.first(), reply.outcomes.len()) {
        (None, _) => None,
        (Some(Outcome::Retry(why) | Outcome::Drop(why)), 1) => Some(why.clone()),
        (Some(_), n) => Some(format!("{} of {n} events not delivered", failed.len())),
    };
    span
}
