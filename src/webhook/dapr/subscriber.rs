//! A Dapr app: delivery's [`Subscriber`] for a subscription with a `dapr` target. Events
//! are presented once when read (a CloudEvent, or the raw payload, on the route its rules
//! pick) and sent over HTTP (one a request, or Dapr's bulk body whose answer settles each
//! entry on its own) or over gRPC to an app that speaks it; an exhausted event may go on to
//! the subscription's dead-letter topic.
//!
//! Only a configured app's subscription to that app's own address is sent as the app's
//! (unguarded, with the app's token, over gRPC when the app speaks it, paused while its
//! health checks fail, with a dead-letter topic); any other subscription with a `dapr`
//! target gets the same bodies but is guarded as a webhook, without a token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::bodies::{bulk_body, bulk_statuses, for_app};
use super::grpc::{AppChannel, CallContext, Event};
use super::health::AppHealthFlag;
use crate::delivery::transport::{Forwarded, Presented, Reply, Request, Sending, Subscriber};
use crate::model::dead_letter::{Forward, FORWARDER_SERVICE};
use crate::model::envelope::{EntryView, Envelope, EnvelopeError};
use crate::model::subscription::{DaprTarget, DeliveryMode};
use crate::webhook::answer::{status_outcome, Answer, Outcome};
use crate::webhook::post::{settle_alike, unsent, Poster, JSON};

/// What a configured app's own subscription has beyond a guarded one's.
pub struct Configured {
    /// Where exhausted events go to be published on the dead-letter topic.
    pub forwards: Option<mpsc::Sender<Forward>>,
    /// A gRPC app's channels, by endpoint.
    pub grpc: Option<Vec<Option<AppChannel>>>,
    /// The app's health, when it is checked.
    pub health: Option<AppHealthFlag>,
}

/// One Dapr subscription's subscriber.
pub struct DaprApp {
    /// How its HTTP requests go out.
    pub poster: Poster,
    /// The subscription's Dapr target.
    pub target: DaprTarget,
    /// Set for a configured app's subscription to the app's own address.
    pub configured: Option<Configured>,
}

impl DaprApp {
    /// Sends to a gRPC app: one event with `OnTopicEvent`, a bulk with `OnBulkTopicEvent`.
    fn send_grpc(&self, channel: Option<AppChannel>, endpoint: usize, request: Request) -> Sending {
        let n = request.items.len();
        let Some(channel) = channel else {
            return unsent(
                Outcome::Retry(format!("endpoint {endpoint} is not a gRPC URL")),
                n,
            );
        };
        let target = self.target.clone();
        let bulk = self.bulk();
        let timeout = Duration::from_millis(self.poster.sub.spec.timeout_ms);
        let app_token = self.poster.app_token.clone();
        let endpoints = self.poster.endpoints.clone();
        Box::pin(async move {
            let events: Vec<Event> = request
                .items
                .iter()
                .map(|item| Event {
                    entry_id: bulk_entry_id(&item.partition, &item.id),
                    body: &item.body,
                    content_type: item.content_type.as_deref().unwrap_or(JSON),
                })
                .collect();
            let context = CallContext {
                target: &target,
                path: request.route.as_deref().unwrap_or(""),
                timeout,
                app_token: app_token.as_deref(),
                traceparent: request.traceparent.as_deref(),
            };
            let called = match (bulk, events.as_slice()) {
                (false, [event]) => channel.send_one(event, &context).await,
                _ => channel.send_bulk(&events, &context).await,
            };
            endpoints.report(endpoint, called.healthy);
            Reply {
                status: called.healthy.then_some(200),
                outcomes: called.outcomes,
            }
        })
    }

    fn bulk(&self) -> bool {
        self.poster.sub.spec.mode == DeliveryMode::Bulk
    }
}

impl Subscriber for DaprApp {
    fn present(&self, raw: &Bytes, _view: &EntryView) -> Result<Option<Presented>, EnvelopeError> {
        // Made from the whole envelope.
        let envelope = Envelope::decode(raw)?;
        let routes = self.poster.sub.routes.as_deref();
        Ok(
            for_app(&self.target, routes, &envelope).map(|app| Presented {
                body: app.body,
                route: Some(app.path),
                content_type: Some(app.content_type),
            }),
        )
    }

    fn paused_until(&self) -> Option<Instant> {
        let health = self.configured.as_ref()?.health.as_ref()?;
        health.paused_until()
    }

    fn pick(&self) -> Result<usize, Option<Instant>> {
        self.poster.endpoints.pick().map(|(index, _)| index)
    }

    fn open_breakers(&self) -> Vec<bool> {
        self.poster.endpoints.open()
    }

    fn send(&self, endpoint: usize, request: Request) -> Sending {
        if let Some(channels) = self.configured.as_ref().and_then(|c| c.grpc.as_ref()) {
            return self.send_grpc(channels.get(endpoint).cloned().flatten(), endpoint, request);
        }
        let n = request.items.len();
        let base = match self.poster.url(endpoint) {
            Ok(base) => base,
            Err(reason) => return unsent(reason, n),
        };
        let mut url = base.clone();
        if let Some(route) = &request.route {
            let joined = format!("{}{}", base.to_string().trim_end_matches('/'), route);
            match joined.parse() {
                Ok(routed) => url = routed,
                Err(err) => {
                    // Never sent to the app's root instead (its 404 would drop them).
                    return unsent(
                        Outcome::Retry(format!("app route `{joined}` is not a URL: {err}")),
                        n,
                    );
                }
            }
        }
        let bulk = self.bulk();
        let entry_ids: Vec<String> = if bulk {
            request
                .items
                .iter()
                .map(|item| bulk_entry_id(&item.partition, &item.id))
                .collect()
        } else {
            Vec::new()
        };
        let (body, content_type): (Bytes, Arc<str>) = match (bulk, request.items.first()) {
            (true, _) => {
                let entries: Vec<(&str, &Bytes, &str)> = entry_ids
                    .iter()
                    .zip(&request.items)
                    .map(|(id, item)| {
                        (
                            id.as_str(),
                            &item.body,
                            item.content_type.as_deref().unwrap_or(JSON),
                        )
                    })
                    .collect();
                (bulk_body(&self.target, &entries), Arc::from(JSON))
            }
            (false, Some(item)) => (
                item.body.clone(),
                item.content_type.clone().unwrap_or_else(|| Arc::from(JSON)),
            ),
            (false, None) => (Bytes::new(), Arc::from(JSON)),
        };
        let answer = self.poster.post(endpoint, url, body, content_type, request);
        Box::pin(async move { reply(answer.await, bulk, &entry_ids, n) })
    }

    fn forward(&self, raw: &Bytes, body: &Bytes, content_type: Option<&Arc<str>>) -> Forwarded {
        // Only a configured app's subscription (the app's own address) has a dead-letter
        // topic.
        let Some(tx) = self.configured.as_ref().and_then(|c| c.forwards.as_ref()) else {
            return Forwarded::NotAsked;
        };
        let Some(topic) = self.target.dead_letter_topic.clone() else {
            return Forwarded::NotAsked;
        };
        // An event that came from a dead-letter topic stays in the DLQ: one hop, no loop.
        if Envelope::decode(raw).is_ok_and(|e| e.service == FORWARDER_SERVICE) {
            tracing::debug!(subscription = %self.poster.sub.spec.name, "an event from a dead-letter topic is not dead-lettered onward");
            return Forwarded::NotAsked;
        }
        let forward = Forward {
            app_id: self.target.app_id.clone(),
            pubsub: self.target.pubsubname.clone(),
            topic,
            body: body.clone(),
            content_type: content_type.cloned().unwrap_or_else(|| Arc::from(JSON)),
        };
        match tx.try_send(forward) {
            Ok(()) => Forwarded::Queued,
            Err(_) => Forwarded::QueueFull,
        }
    }
}

/// One outcome per item: a Dapr app's bulk answer settles each entry on its own (an entry
/// it leaves out, or an answer without readable statuses, is retried); any other answer
/// settles all of them alike.
fn reply(answer: Answer, bulk_app: bool, entry_ids: &[String], n: usize) -> Reply {
    match answer {
        Answer::Http {
            status,
            outcome: Outcome::Delivered,
            body,
        } if bulk_app => {
            let statuses = bulk_statuses(&body).unwrap_or_default();
            Reply {
                status: Some(status),
                outcomes: entry_ids
                    .iter()
                    .map(|id| match statuses.get(id) {
                        Some(said) => status_outcome(said),
                        None => {
                            Outcome::Retry("the entry is missing from the app's statuses".into())
                        }
                    })
                    .collect(),
            }
        }
        other => settle_alike(other, n),
    }
}

/// A bulk entry's id for a Dapr app: stream ids repeat across partitions, so the
/// partition is part of it.
fn bulk_entry_id(partition: &str, id: &str) -> String {
    format!("{partition}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_apps_answer_settles_each_entry() {
        let ids = vec![
            "p/1-0".to_string(),
            "p/2-0".to_string(),
            "p/3-0".to_string(),
        ];
        let body = br#"{"statuses":[{"entryId":"p/1-0","status":"SUCCESS"},{"entryId":"p/2-0","status":"drop"}]}"#;
        let answer = Answer::Http {
            status: 200,
            outcome: Outcome::Delivered,
            body: Bytes::from_static(body),
        };
        let reply = reply(answer, true, &ids, 3);
        assert_eq!(reply.status, Some(200));
        assert_eq!(reply.outcomes[0], Outcome::Delivered);
        assert!(matches!(reply.outcomes[1], Outcome::Drop(_)));
        assert!(matches!(&reply.outcomes[2], Outcome::Retry(r) if r.contains("missing")));
    }

    #[test]
    fn other_answers_settle_every_item_alike() {
        let failed = reply(Answer::Failed("timeout".into()), false, &[], 2);
        assert_eq!(failed.status, None);
        assert_eq!(failed.outcomes, vec![Outcome::Retry("timeout".into()); 2]);
        let unreadable = Answer::Http {
            status: 200,
            outcome: Outcome::Delivered,
            body: Bytes::from_static(b"not json"),
        };
        let retried = reply(unreadable, true, &["p/1-0".into()], 1);
        assert!(matches!(retried.outcomes[0], Outcome::Retry(_)));
    }
}
