//! Request building in a shard: how many ready lanes make a request (one, or up to the
//! bulk size, waiting at most the bulk wait for more), which of them go together (one
//! route a request), the request made from their heads (each head's attempt counted), and
//! the span of the attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Delivery;
use crate::delivery::lanes::Lanes;
use crate::delivery::transport::{Headers, Item, Outcome, Reply, Request};
use crate::model::clock::now_us;
use crate::model::subscription::{DeliveryMode, SubscriptionSpec};
use crate::model::trace::TraceContext;
use crate::traces::{Kind, Span, Tracer};

/// Builds a subscription's requests.
pub(super) struct RequestBuilder {
    /// The subscription's name (for spans).
    name: String,
    /// Its endpoints (for spans).
    endpoints: Vec<String>,
    /// Bulk mode: several events a request.
    bulk: bool,
    /// Most events a request.
    per_request: usize,
    /// Bulk mode: longest a partly filled request waits for more ready lanes.
    max_wait: Duration,
    /// Bulk mode: when the partly filled request goes anyway.
    deadline: Option<Instant>,
    /// Where attempts' spans go.
    tracer: Tracer,
}

/// A request made from the heads of some lanes.
pub(super) struct Built {
    /// The lanes whose heads it carries, in the order of its items.
    pub(super) lanes: Vec<Arc<str>>,
    /// The request.
    pub(super) request: Request,
    /// The attempt's span, begun, when spans are recorded and its trace is sampled.
    pub(super) span: Option<Span>,
    /// Lanes taken but of another route than the request's, in their order: they wait
    /// for the next request.
    pub(super) other_routes: Vec<Arc<str>>,
}

impl RequestBuilder {
    /// The builder of `spec`'s requests.
    pub(super) fn new(spec: &SubscriptionSpec, tracer: Tracer) -> Self {
        let bulk = spec.mode == DeliveryMode::Bulk;
        Self {
            name: spec.name.clone(),
            endpoints: spec.endpoints.clone(),
            bulk,
            per_request: if bulk { spec.bulk.max_events } else { 1 },
            max_wait: Duration::from_millis(spec.bulk.max_wait_ms),
            deadline: None,
            tracer,
        }
    }

    /// Most lanes a request takes.
    pub(super) fn per_request(&self) -> usize {
        self.per_request
    }

    /// Whether to wait for more than the `ready` lanes before sending (bulk mode, until the
    /// bulk wait, which starts now if it has not, is over); `now` is read only then.
    pub(super) fn wait_for_more(&mut self, ready: usize, now: impl FnOnce() -> Instant) -> bool {
        if !self.bulk || ready >= self.per_request {
            return false;
        }
        let now = now();
        match self.deadline {
            None => {
                self.deadline = Some(now + self.max_wait);
                true
            }
            Some(deadline) => now < deadline,
        }
    }

    /// When a partly filled bulk request goes anyway, if one waits.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A request went, or nothing waits to fill one any more (the lanes were sent, paused,
    /// failed fast or let go: a deadline left behind would wake the shard in a loop).
    pub(super) fn stop_waiting(&mut self) {
        self.deadline = None;
    }

    /// Makes the request of `lanes` to `endpoint`: the lanes of the first one's route (the
    /// others are handed back), each head's attempt counted (its first attempt here
    /// stamped `first_ms`).
    pub(super) fn build(
        &self,
        mut lanes: Vec<Arc<str>>,
        heads: &mut Lanes<Delivery>,
        endpoint: usize,
        first_ms: u64,
    ) -> Built {
        let bulk = self.bulk;
        // Every event of one request takes the same route; the others wait for the next
        // request, in their order.
        let route = lanes
            .first()
            .and_then(|l| heads.head(l))
            .and_then(|h| h.route.clone());
        let mut other_routes = Vec::new();
        if let Some(route) = &route {
            let (same, other): (Vec<_>, Vec<_>) = lanes.into_iter().partition(|l| {
                heads
                    .head(l)
                    .is_some_and(|h| h.route.as_deref() == Some(&**route))
            });
            other_routes = other;
            lanes = same;
        }
        // One outcome comes back per item: keep only lanes with an event to send, so that
        // lanes and items stay aligned.
        lanes.retain(|lane| heads.head(lane).is_some());
        let mut items = Vec::with_capacity(lanes.len());
        let mut headers = None;
        let mut attempt = 0;
        let mut traceparent = None;
        let mut stored_contexts = Vec::new();
        let recording = self.tracer.enabled();
        for lane in &lanes {
            if let Some(head) = heads.head_mut(lane) {
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
        // The subscriber continues the trace from the attempt's own span.
        let span = self.attempt_span(&stored_contexts, &headers, endpoint, attempt);
        match (&span, stored_contexts.first()) {
            (Some(span), _) => traceparent = Some(span.context.to_traceparent()),
            (None, Some(stored)) if !bulk => traceparent = Some(stored.child().to_traceparent()),
            (None, _) => {}
        }
        Built {
            lanes,
            request: Request {
                items,
                route,
                headers,
                attempt,
                traceparent,
                replay: false,
            },
            span,
            other_routes,
        }
    }

    /// The span of one attempt, begun, when spans are recorded and its trace is sampled:
    /// in single mode a child of the event's stored context (so that the subscriber's
    /// span is a child of it in turn); in bulk mode a span of its own trace linked to each
    /// event's context.
    fn attempt_span(
        &self,
        stored: &[TraceContext],
        headers: &Option<Headers>,
        endpoint: usize,
        attempt: u32,
    ) -> Option<Span> {
        if !self.tracer.enabled() {
            return None;
        }
        let events = stored.len().max(1) as i64;
        let (context, parent, links) = if self.bulk {
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
        let mut attributes = vec![
            ("messaging.system", "evrouter".into()),
            ("messaging.operation.type", "process".into()),
            ("messaging.consumer.group.name", self.name.clone().into()),
            ("messaging.batch.message_count", events.into()),
            ("evrouter.attempt", i64::from(attempt).into()),
        ];
        if let Some(url) = self.endpoints.get(endpoint) {
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
            name: format!("deliver {}", self.name),
            kind: Kind::Client,
            start_us: now_us(),
            end_us: 0,
            attributes,
            links,
            error: None,
        })
    }
}

/// An attempt's span, ended by its reply: the answer's status, and an error unless every
/// event was delivered.
pub(super) fn finish_attempt(mut span: Span, reply: &Reply) -> Span {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::shard::tests::delivery;

    fn spec(mode: DeliveryMode, max_events: usize) -> SubscriptionSpec {
        let mut spec = crate::model::subscription::tests::spec();
        spec.mode = mode;
        spec.bulk.max_events = max_events;
        spec.bulk.max_wait_ms = 20;
        spec
    }

    fn lanes_of(heads: &mut Lanes<Delivery>, names: &[(&str, Option<&str>)]) -> Vec<Arc<str>> {
        names
            .iter()
            .map(|(name, route)| {
                let mut event = delivery(name, None);
                event.route = route.map(Arc::from);
                let lane = event.lane.clone();
                heads.push(lane.clone(), event);
                lane
            })
            .collect()
    }

    #[test]
    fn single_mode_sends_one_event_with_its_headers_and_never_waits() {
        let mut builder = RequestBuilder::new(&spec(DeliveryMode::Single, 10), Tracer::off());
        assert_eq!(builder.per_request(), 1);
        assert!(!builder.wait_for_more(0, Instant::now));
        assert_eq!(builder.deadline(), None);
        let mut heads = Lanes::default();
        let lanes = lanes_of(&mut heads, &[("a", None)]);
        let built = builder.build(lanes, &mut heads, 0, 1234);
        assert_eq!(built.lanes.len(), 1);
        let request = &built.request;
        assert_eq!(request.items.len(), 1);
        assert_eq!(request.attempt, 1);
        let headers = request.headers.as_ref().expect("single mode has headers");
        assert_eq!(headers.event_id, "event-a");
        // The stored context is continued by a child of it.
        let sent = request.traceparent.as_deref().expect("traceparent");
        assert_ne!(sent, heads.head("a").expect("head").traceparent);
        assert_eq!(
            &sent[..35],
            &heads.head("a").expect("head").traceparent[..35]
        );
        assert!(built.span.is_none());
        let head = heads.head("a").expect("head");
        assert_eq!((head.attempts, head.first_attempt_ms), (1, 1234));
    }

    #[test]
    fn an_attempt_again_counts_on_and_keeps_the_first_attempts_time() {
        let builder = RequestBuilder::new(&spec(DeliveryMode::Single, 10), Tracer::off());
        let mut heads = Lanes::default();
        let lanes = lanes_of(&mut heads, &[("a", None)]);
        builder.build(lanes.clone(), &mut heads, 0, 1000);
        let again = builder.build(lanes, &mut heads, 0, 2000);
        assert_eq!(again.request.attempt, 2);
        let head = heads.head("a").expect("head");
        assert_eq!((head.attempts, head.first_attempt_ms), (2, 1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partly_filled_bulk_request_waits_at_most_the_bulk_wait() {
        let mut builder = RequestBuilder::new(&spec(DeliveryMode::Bulk, 3), Tracer::off());
        let now = || tokio::time::Instant::now().into_std();
        let start = now();
        // A full request goes at once.
        assert!(!builder.wait_for_more(3, now));
        // A partial one starts the wait.
        assert!(builder.wait_for_more(2, now));
        assert_eq!(builder.deadline(), Some(start + Duration::from_millis(20)));
        tokio::time::advance(Duration::from_millis(19)).await;
        assert!(builder.wait_for_more(2, now));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!builder.wait_for_more(2, now));
        builder.stop_waiting();
        assert_eq!(builder.deadline(), None);
        // The next partial request waits anew.
        assert!(builder.wait_for_more(1, now));
        assert_eq!(builder.deadline(), Some(now() + Duration::from_millis(20)));
    }

    #[test]
    fn a_bulk_request_takes_the_first_lanes_route_and_hands_the_others_back() {
        let builder = RequestBuilder::new(&spec(DeliveryMode::Bulk, 10), Tracer::off());
        let mut heads = Lanes::default();
        let lanes = lanes_of(
            &mut heads,
            &[
                ("a", Some("/orders")),
                ("b", Some("/payments")),
                ("c", Some("/orders")),
                ("d", None),
                ("e", Some("/payments")),
            ],
        );
        let built = builder.build(lanes, &mut heads, 0, 1);
        let names = |lanes: &[Arc<str>]| lanes.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&built.lanes), ["a", "c"]);
        assert_eq!(names(&built.other_routes), ["b", "d", "e"]);
        let request = &built.request;
        assert_eq!(request.route.as_deref(), Some("/orders"));
        let ids: Vec<&str> = request.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["1-a", "1-c"]);
        // Bulk requests carry no single event's headers or context.
        assert!(request.headers.is_none());
        assert!(request.traceparent.is_none());
        // Only the heads sent counted an attempt.
        assert_eq!(heads.head("a").expect("head").attempts, 1);
        assert_eq!(heads.head("b").expect("head").attempts, 0);
    }

    #[test]
    fn lanes_with_no_head_are_left_out_so_that_items_and_lanes_align() {
        let builder = RequestBuilder::new(&spec(DeliveryMode::Bulk, 10), Tracer::off());
        let mut heads = Lanes::default();
        let mut lanes = lanes_of(&mut heads, &[("a", None), ("b", None)]);
        lanes.insert(1, Arc::from("gone"));
        let built = builder.build(lanes, &mut heads, 0, 1);
        assert_eq!(built.lanes.len(), 2);
        assert_eq!(built.request.items.len(), 2);
        assert!(built.other_routes.is_empty());
    }

    #[test]
    fn an_attempts_span_ends_with_its_reply() {
        let span = Span {
            context: TraceContext::root(true),
            parent: None,
            name: "deliver shipping".into(),
            kind: Kind::Client,
            start_us: 1,
            end_us: 0,
            attributes: Vec::new(),
            links: Vec::new(),
            error: None,
        };
        let one = finish_attempt(
            span.clone(),
            &Reply::uniform(
                Some(503),
                Outcome::Retry("subscriber answered 503".into()),
                1,
            ),
        );
        assert_eq!(one.error.as_deref(), Some("subscriber answered 503"));
        assert!(one.end_us >= one.start_us);
        let some = finish_attempt(
            span.clone(),
            &Reply {
                status: Some(200),
                outcomes: vec![Outcome::Delivered, Outcome::Drop("DROP".into())],
            },
        );
        assert_eq!(some.error.as_deref(), Some("1 of 2 events not delivered"));
        let all = finish_attempt(span, &Reply::uniform(Some(200), Outcome::Delivered, 3));
        assert_eq!(all.error, None);
    }
}
