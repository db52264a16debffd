//! A subscription's subscriber over HTTP: delivery's [`Subscriber`] for plain webhooks and
//! Dapr apps. Events are presented once when read (a webhook gets the stored JSON without a
//! copy; a Dapr app a CloudEvent on the route its rules pick), requests are built here (one
//! event, a JSON array, or Dapr's bulk body), and answers become one outcome per event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::answer::{status_outcome, Answer, Outcome};
use super::app_health::{AppHealth, AppHealthFlag};
use super::dapr;
use super::endpoints::Endpoints;
use super::guard::Guard;
use super::signature;
use super::{Client, Outgoing, Roots};
use crate::delivery::subscription::Subscription;
use crate::delivery::transport::{
    Connector, Forwarded, Presented, Reply, Request, Sending, Subscriber,
};
use crate::model::clock::now_ms;
use crate::model::dead_letter::{Forward, FORWARDER_SERVICE};
use crate::model::envelope::{EntryView, Envelope, EnvelopeError, PayloadFormat};
use crate::model::subscription::{DaprTarget, DeliveryMode};

const JSON: &str = "application/json";

/// Makes the HTTP subscriber of every subscription; they share one pooled client (two:
/// Dapr apps come from evrouter's own config and may be on internal addresses, webhooks
/// only where `guard` allows).
///
/// A subscription is sent as a Dapr app's (unguarded, with the app's token, over gRPC
/// when the app speaks it) only when its app is configured and every endpoint is that
/// app's configured address; any other subscription, whatever its `dapr` field says, is a
/// webhook: guarded, without a token.
pub struct Webhooks {
    client: Client,
    apps: Client,
    guard: Arc<Guard>,
    forwards: Option<mpsc::Sender<Forward>>,
    app_tokens: HashMap<String, Arc<str>>,
    app_urls: HashMap<String, String>,
    app_health: Arc<AppHealth>,
}

impl Webhooks {
    /// Subscribers sending with fresh clients; exhausted events of Dapr subscriptions with
    /// a `deadLetterTopic` go to `forwards` (to be published there).
    pub fn new(guard: Arc<Guard>, roots: &Roots, forwards: Option<mpsc::Sender<Forward>>) -> Self {
        Self {
            client: Client::new(guard.clone(), roots),
            apps: Client::new(
                Arc::new(Guard::new(&["0.0.0.0/0".into(), "::/0".into()])),
                roots,
            ),
            guard,
            forwards,
            app_tokens: HashMap::new(),
            app_urls: HashMap::new(),
            app_health: Arc::new(AppHealth::default()),
        }
    }

    /// Sends nothing to a Dapr app whose health checks find it unhealthy.
    pub fn with_app_health(mut self, health: Arc<AppHealth>) -> Self {
        self.app_health = health;
        self
    }

    /// Sends each Dapr app its API token (by app id) as `dapr-api-token`.
    pub fn with_app_tokens(mut self, tokens: HashMap<String, Arc<str>>) -> Self {
        self.app_tokens = tokens;
        self
    }

    /// The configured Dapr apps' addresses, by app id: the only addresses a subscription
    /// reaches as a Dapr app.
    pub fn with_app_urls<'a>(mut self, apps: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.app_urls = apps
            .into_iter()
            .map(|(id, url)| (id.to_string(), url.trim_end_matches('/').to_string()))
            .collect();
        self
    }

    /// The Dapr target of `sub` when it is a configured app's subscription to that app's
    /// own address.
    fn app_target<'s>(&self, sub: &'s Subscription) -> Option<&'s DaprTarget> {
        let target = sub.spec.dapr.as_ref()?;
        let url = self.app_urls.get(&target.app_id)?;
        let endpoints = &sub.spec.endpoints;
        (!endpoints.is_empty() && endpoints.iter().all(|e| e.trim_end_matches('/') == url))
            .then_some(target)
    }
}

impl Connector for Webhooks {
    fn connect(&self, sub: &Arc<Subscription>) -> Arc<dyn Subscriber> {
        let app = self.app_target(sub);
        if app.is_none() && sub.spec.dapr.is_some() {
            tracing::warn!(subscription = %sub.spec.name, "a Dapr subscription not to its configured app's address: sent as a webhook, guarded and without a token");
        }
        Arc::new(Webhook {
            sub: sub.clone(),
            endpoints: Arc::new(Endpoints::new(&sub.spec.endpoints, &sub.spec.breaker)),
            client: if app.is_some() {
                self.apps.clone()
            } else {
                self.client.clone()
            },
            guard: app.is_none().then(|| self.guard.clone()),
            forwards: self.forwards.clone(),
            app_token: app.and_then(|d| self.app_tokens.get(&d.app_id).cloned()),
            health: app.and_then(|d| self.app_health.flag(&d.app_id)),
            app: app.is_some(),
            grpc: app.filter(|d| d.grpc).map(|_| {
                sub.spec
                    .endpoints
                    .iter()
                    .map(|url| super::grpc::AppChannel::new(url))
                    .collect()
            }),
        })
    }
}

/// One subscription's subscriber.
struct Webhook {
    sub: Arc<Subscription>,
    endpoints: Arc<Endpoints>,
    client: Client,
    /// Checks an endpoint given as an address (names are checked when resolved).
    guard: Option<Arc<Guard>>,
    forwards: Option<mpsc::Sender<Forward>>,
    /// A Dapr app's API token.
    app_token: Option<Arc<str>>,
    /// A gRPC app's channels, by endpoint.
    grpc: Option<Vec<Option<super::grpc::AppChannel>>>,
    /// A Dapr app's health, when it is checked.
    health: Option<AppHealthFlag>,
    /// A configured Dapr app's subscription to the app's own address.
    app: bool,
}

impl Webhook {
    /// Sends to a gRPC app: one event with `OnTopicEvent`, a bulk with `OnBulkTopicEvent`.
    fn send_grpc(
        &self,
        channel: Option<super::grpc::AppChannel>,
        target: &crate::model::subscription::DaprTarget,
        endpoint: usize,
        request: Request,
    ) -> Sending {
        let n = request.items.len();
        let Some(channel) = channel else {
            let reason = Outcome::Retry(format!("endpoint {endpoint} is not a gRPC URL"));
            return Box::pin(async move { Reply::uniform(None, reason, n) });
        };
        let target = target.clone();
        let bulk = self.sub.spec.mode == DeliveryMode::Bulk;
        let timeout = Duration::from_millis(self.sub.spec.timeout_ms);
        let app_token = self.app_token.clone();
        let endpoints = self.endpoints.clone();
        Box::pin(async move {
            let events: Vec<super::grpc::Event> = request
                .items
                .iter()
                .map(|item| super::grpc::Event {
                    entry_id: bulk_entry_id(&item.partition, &item.id),
                    body: &item.body,
                    content_type: item.content_type.as_deref().unwrap_or(JSON),
                })
                .collect();
            let context = super::grpc::CallContext {
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

    fn bulk_app(&self) -> bool {
        self.sub.spec.dapr.is_some() && self.sub.spec.mode == DeliveryMode::Bulk
    }
}

impl Subscriber for Webhook {
    fn present(&self, raw: &Bytes, view: &EntryView) -> Result<Option<Presented>, EnvelopeError> {
        let (target, format) = (&self.sub.spec.dapr, view.format);
        if target.is_none() && format != PayloadFormat::Raw {
            // The common case: a webhook gets the payload as stored, without another copy.
            return Ok(Some(Presented {
                body: raw.slice(view.payload.clone()),
                route: None,
                content_type: None,
            }));
        }
        // A Dapr app, or a raw Dapr payload for a webhook (as a CloudEvent, so that its body
        // is JSON): made from the whole envelope.
        let envelope = Envelope::decode(raw)?;
        Ok(match target {
            None => Some(Presented {
                body: dapr::for_webhook(&envelope),
                route: None,
                content_type: None,
            }),
            Some(target) => {
                dapr::for_app(target, self.sub.routes.as_deref(), &envelope).map(|app| Presented {
                    body: app.body,
                    route: Some(app.path),
                    content_type: Some(app.content_type),
                })
            }
        })
    }

    fn paused_until(&self) -> Option<Instant> {
        self.health.as_ref().and_then(AppHealthFlag::paused_until)
    }

    fn pick(&self) -> Result<usize, Option<Instant>> {
        self.endpoints.pick().map(|(index, _)| index)
    }

    fn open_breakers(&self) -> Vec<bool> {
        self.endpoints.open()
    }

    fn send(&self, endpoint: usize, request: Request) -> Sending {
        if let (Some(channels), Some(target)) = (&self.grpc, &self.sub.spec.dapr) {
            return self.send_grpc(
                channels.get(endpoint).cloned().flatten(),
                target,
                endpoint,
                request,
            );
        }
        let n = request.items.len();
        let Some(base) = self.endpoints.url(endpoint) else {
            let reason = Outcome::Retry(format!("no endpoint {endpoint}"));
            return Box::pin(async move { Reply::uniform(None, reason, n) });
        };
        if let (Some(guard), Some(host)) = (&self.guard, base.host()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse().is_ok_and(|ip| !guard.allows_ip(ip)) {
                let reason = Outcome::Retry("the endpoint's address is refused (internal)".into());
                return Box::pin(async move { Reply::uniform(None, reason, n) });
            }
        }
        let mut url = base.clone();
        if let Some(route) = &request.route {
            let joined = format!("{}{}", base.to_string().trim_end_matches('/'), route);
            match joined.parse() {
                Ok(routed) => url = routed,
                Err(err) => {
                    // Never sent to the app's root instead (its 404 would drop them).
                    let reason =
                        Outcome::Retry(format!("app route `{joined}` is not a URL: {err}"));
                    return Box::pin(async move { Reply::uniform(None, reason, n) });
                }
            }
        }
        let bulk = self.sub.spec.mode == DeliveryMode::Bulk;
        let bulk_app = self.bulk_app();
        let entry_ids: Vec<String> = if bulk_app {
            request
                .items
                .iter()
                .map(|item| bulk_entry_id(&item.partition, &item.id))
                .collect()
        } else {
            Vec::new()
        };
        let (body, content_type): (Bytes, Arc<str>) = match (&self.sub.spec.dapr, bulk) {
            (Some(target), true) => {
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
                (dapr::bulk_body(target, &entries), Arc::from(JSON))
            }
            (None, true) => (
                json_array(request.items.iter().map(|item| &item.body)),
                Arc::from(JSON),
            ),
            (_, false) => match request.items.first() {
                Some(item) => (
                    item.body.clone(),
                    item.content_type.clone().unwrap_or_else(|| Arc::from(JSON)),
                ),
                None => (Bytes::new(), Arc::from(JSON)),
            },
        };
        // A single event's id is its own; a bulk request's is its first entry's place and
        // size, the same for every attempt of the same batch.
        let signed = self.sub.secrets.as_ref().map(|secrets| {
            let id = match (&request.headers, request.items.first()) {
                (Some(headers), _) => headers.event_id.clone(),
                (None, Some(first)) => format!("{}/{}+{}", first.partition, first.id, n),
                (None, None) => String::new(),
            };
            signature::sign(secrets, &id, now_ms(), &body)
        });
        let client = self.client.clone();
        let app_token = self.app_token.clone();
        let endpoints = self.endpoints.clone();
        let timeout = Duration::from_millis(self.sub.spec.timeout_ms);
        let drops_on_404 = self.sub.spec.drops_on_404();
        let replay = request.replay;
        Box::pin(async move {
            let headers = request.headers.as_ref();
            let answer = client
                .send(Outgoing {
                    url: &url,
                    body,
                    event_id: headers.map(|h| h.event_id.as_str()),
                    topic: headers.map(|h| h.topic.as_str()),
                    attempt: request.attempt,
                    traceparent: request.traceparent.as_deref(),
                    content_type: &content_type,
                    timeout,
                    signed,
                    app_token: app_token.as_deref(),
                    replay,
                })
                .await;
            endpoints.report(endpoint, answer.healthy());
            let answer = match answer {
                Answer::Http {
                    status: 404, body, ..
                } if !drops_on_404 => Answer::Http {
                    status: 404,
                    outcome: Outcome::Retry("subscriber answered 404".into()),
                    body,
                },
                other => other,
            };
            reply(answer, bulk_app, &entry_ids, n)
        })
    }

    fn forward(&self, raw: &Bytes, body: &Bytes, content_type: Option<&Arc<str>>) -> Forwarded {
        // Only a configured app's subscription (the app's own address) has a dead-letter
        // topic.
        let target = self.app.then_some(self.sub.spec.dapr.as_ref()).flatten();
        let (Some(target), Some(tx)) = (target, &self.forwards) else {
            return Forwarded::NotAsked;
        };
        let Some(topic) = target.dead_letter_topic.clone() else {
            return Forwarded::NotAsked;
        };
        // An event that came from a dead-letter topic stays in the DLQ: one hop, no loop.
        if Envelope::decode(raw).is_ok_and(|e| e.service == FORWARDER_SERVICE) {
            tracing::debug!(subscription = %self.sub.spec.name, "an event from a dead-letter topic is not dead-lettered onward");
            return Forwarded::NotAsked;
        }
        let forward = Forward {
            app_id: target.app_id.clone(),
            pubsub: target.pubsubname.clone(),
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
            let statuses = dapr::bulk_statuses(&body).unwrap_or_default();
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
        Answer::Http {
            status, outcome, ..
        } => Reply::uniform(Some(status), outcome, n),
        Answer::Failed(reason) => Reply::uniform(None, Outcome::Retry(reason), n),
    }
}

/// A bulk entry's id for a Dapr app: stream ids repeat across partitions, so the
/// partition is part of it.
fn bulk_entry_id(partition: &str, id: &str) -> String {
    format!("{partition}/{id}")
}

/// Joins JSON documents into one JSON array.
fn json_array<'a>(items: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let len = items.clone().map(|b| b.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_joins_documents() {
        let items = [
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        let joined = json_array(items.iter());
        let parsed: serde_json::Value = serde_json::from_slice(&joined).expect("json");
        assert_eq!(parsed, serde_json::json!([{"a":1},{"b":2}]));
        assert_eq!(&json_array([].iter())[..], b"[]");
    }

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
