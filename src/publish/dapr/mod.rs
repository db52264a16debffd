//! The Dapr publish API below HTTP: which pubsubs exist and how their topics map to
//! evrouter topics, the `metadata.*` a publish may carry, the envelope a Dapr body becomes
//! (a CloudEvent, or the raw payload), and the publisher of events that Dapr subscriptions
//! forward to their `deadLetterTopic`.

pub mod bulk;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{PublishError, Publisher};
use crate::auth::Principal;
use crate::config::{DaprConfig, DaprPubsubConfig};
use crate::model::clock::now_us;
use crate::model::cloudevent::{self, Body, CloudEventError, Overrides, PublishMeta};
use crate::model::dead_letter::{Forward, FORWARDER_SERVICE};
use crate::model::envelope::{Envelope, PayloadFormat};
use crate::model::event::{deeper_than, RawEvent, RawMetadata};
use crate::model::violation::Violation;
use crate::schema::SchemaRegistry;
use crate::traces::{Started, Tracer};

/// Why a Dapr publish (or one bulk entry) was refused before it reached the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaprRefusal {
    /// No pubsub of this name is configured.
    #[error("pubsub {0} is not found")]
    PubsubNotFound(String),
    /// The path names no topic.
    #[error("topic is empty in pubsub {0}")]
    TopicEmpty(String),
    /// The pubsub's `allowed_topics` leaves it out.
    #[error("topic {topic} is not allowed for pubsub {pubsub}")]
    TopicForbidden {
        /// The topic.
        topic: String,
        /// The pubsub.
        pubsub: String,
    },
    /// The topic cannot be an evrouter topic.
    #[error(
        "topic `{0}` cannot be mapped to an evrouter topic: use letters, digits, `_`, `-`, `.` \
         and `/` (read as `.`), without empty segments"
    )]
    TopicInvalid(String),
    /// The body cannot be made a CloudEvent.
    #[error("{0}")]
    BadCloudEvent(String),
    /// A `metadata.*` value is wrong.
    #[error("{0}")]
    BadMetadata(String),
    /// A platform event in the body fails its schema.
    #[error("the event is not valid: {}", .0.iter().map(|v| format!("{} {}", v.path, v.message)).collect::<Vec<_>>().join("; "))]
    InvalidEvent(Vec<Violation>),
}

/// Who published, from the request's headers.
#[derive(Debug, Default, Clone)]
pub struct Caller {
    /// `dapr-app-id`.
    pub app_id: Option<String>,
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `tracestate`.
    pub tracestate: Option<String>,
}

/// The Dapr API's pubsubs: which pubsub names exist and how their topics map.
#[derive(Debug, Default)]
pub struct DaprPubsubs {
    pubsubs: HashMap<String, DaprPubsubConfig>,
    schemas: Option<Arc<SchemaRegistry>>,
    tracer: Tracer,
}

impl DaprPubsubs {
    /// The API of a validated config.
    pub fn new(config: &DaprConfig) -> Self {
        Self {
            pubsubs: config
                .pubsubs
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            schemas: None,
            tracer: Tracer::off(),
        }
    }

    /// Begins each event's publish span with `tracer`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Validates platform events published through the Dapr API with `schemas`, as the
    /// native API does.
    pub fn with_schemas(mut self, schemas: Arc<SchemaRegistry>) -> Self {
        self.schemas = Some(schemas);
        self
    }

    /// A platform event carried by a Dapr body (a JSON object with `event_type`, as the
    /// body itself or as a CloudEvent's `data`) is validated like a native publish: the
    /// base schema and the schema registered for its type. Other bodies are not platform
    /// events and are stored as they are.
    fn check_platform_event(&self, raw: &RawValue) -> Result<(), DaprRefusal> {
        let Some(schemas) = &self.schemas else {
            return Ok(());
        };
        let Ok(event) = RawEvent::parse(raw) else {
            return Ok(());
        };
        if event.event_type.is_none() {
            return Ok(());
        }
        let metadata = RawMetadata::parse(event.metadata);
        let violations = schemas.validate(&event, &metadata);
        if violations.is_empty() {
            return Ok(());
        }
        Err(DaprRefusal::InvalidEvent(violations))
    }

    /// Names of the configured pubsubs.
    pub fn pubsub_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pubsubs.keys().cloned().collect();
        names.sort();
        names
    }

    /// The evrouter topic a Dapr topic of `pubsub` is stored under, or Dapr's refusal.
    pub fn target(&self, pubsub: &str, topic: &str) -> Result<String, DaprRefusal> {
        let config = self
            .pubsubs
            .get(pubsub)
            .ok_or_else(|| DaprRefusal::PubsubNotFound(pubsub.to_string()))?;
        if topic.is_empty() {
            return Err(DaprRefusal::TopicEmpty(pubsub.to_string()));
        }
        if !config.allowed_topics.is_empty() && !config.allowed_topics.iter().any(|t| t == topic) {
            return Err(DaprRefusal::TopicForbidden {
                topic: topic.to_string(),
                pubsub: pubsub.to_string(),
            });
        }
        map_topic(&config.topic_prefix, topic)
            .ok_or_else(|| DaprRefusal::TopicInvalid(topic.to_string()))
    }
}

/// Where a Dapr publish goes: the pubsub and topic the app named, and the evrouter topic
/// they are stored under ([`DaprPubsubs::target`], found once per request).
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The pubsub name.
    pub pubsub: &'a str,
    /// The topic, as the app named it.
    pub topic: &'a str,
    /// The evrouter topic.
    pub target: &'a str,
}

/// How deep a JSON body may nest.
#[derive(Debug, Clone, Copy)]
pub enum Depth {
    /// No deeper than this many levels: measured here.
    Limit(usize),
    /// Already measured by the caller (the entries of a bulk body measured as a whole).
    Checked,
}

/// Reads a Dapr boolean as Dapr's `IsTruthy` does: `true`, `1`, `yes`, `on`, `y` (any case)
/// are true; `false`, `0`, `no`, `off`, `n` and empty are false; anything else is not a
/// boolean.
pub fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "" => Some(false),
        _ => None,
    }
}

/// The evrouter topic of a Dapr topic: the pubsub's prefix, then the topic lower-cased
/// with `/` read as `.` (so `orders/Created` is `orders.created`).
pub fn map_topic(prefix: &str, topic: &str) -> Option<String> {
    let mapped = format!("{prefix}{}", topic.to_ascii_lowercase().replace('/', "."));
    crate::model::topic::check_topic(&mapped)
        .ok()
        .map(|()| mapped)
}

/// Longest time to live accepted: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The `metadata.*` query parameters (and bulk entries' metadata) evrouter reads.
#[derive(Debug, Default, Clone)]
pub struct Metadata {
    /// `rawPayload`: store the body as published, without a CloudEvent around it.
    pub raw_payload: bool,
    /// `ttlInSeconds`.
    pub ttl_seconds: Option<u64>,
    /// `partitionKey`: the event's key.
    pub partition_key: Option<String>,
    /// `cloudevent.*` attributes that replace the built ones.
    pub overrides: Overrides,
}

impl Metadata {
    /// Reads `metadata.name=value` pairs; `strip` is the prefix to remove (`metadata.`
    /// in a query, nothing in a bulk entry's metadata object).
    pub fn read<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
        strip: &str,
        into: &mut Metadata,
    ) -> Result<(), DaprRefusal> {
        for (name, value) in pairs {
            let Some(name) = name.strip_prefix(strip) else {
                continue;
            };
            // Some SDKs send values JSON-encoded (`"true"` with its quotes).
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let text = || Some(value.to_string());
            match name {
                "rawPayload" => {
                    into.raw_payload = truthy(value).ok_or_else(|| {
                        DaprRefusal::BadMetadata(format!(
                            "metadata.rawPayload must be true or false, not `{value}`"
                        ))
                    })?;
                }
                "ttlInSeconds" => {
                    let ttl = value
                        .parse::<u64>()
                        .ok()
                        .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl))
                        .ok_or_else(|| {
                            DaprRefusal::BadMetadata(format!(
                                "metadata.ttlInSeconds must be a whole number of seconds from 1 \
                                 to {MAX_TTL_SECONDS}, not `{value}`"
                            ))
                        })?;
                    into.ttl_seconds = Some(ttl);
                }
                "partitionKey" => into.partition_key = text(),
                "cloudevent.id" => into.overrides.id = text(),
                "cloudevent.source" => into.overrides.source = text(),
                "cloudevent.type" => into.overrides.event_type = text(),
                "cloudevent.traceid" => into.overrides.traceid = text(),
                "cloudevent.traceparent" => into.overrides.traceparent = text(),
                "cloudevent.tracestate" => into.overrides.tracestate = text(),
                _ => {}
            }
        }
        Ok(())
    }
}

impl DaprPubsubs {
    /// Builds the stored envelope of one published body, and its publish span when its
    /// trace is recorded.
    pub fn envelope(
        &self,
        to: Route<'_>,
        body: Body<'_>,
        content_type: &str,
        metadata: &Metadata,
        caller: &Caller,
        depth: Depth,
    ) -> Result<(Envelope, Option<Started>), DaprRefusal> {
        let Route {
            pubsub,
            topic,
            target,
        } = to;
        let received_us = now_us();
        let expires_us = metadata
            .ttl_seconds
            .map(|ttl| received_us.saturating_add(ttl.saturating_mul(1_000_000)));
        if let Depth::Limit(max_depth) = depth {
            if (cloudevent::is_json(content_type) || content_type == cloudevent::CLOUDEVENTS_JSON)
                && deeper_than(body.bytes(), max_depth)
            {
                return Err(DaprRefusal::BadCloudEvent(format!(
                    "the body nests deeper than {max_depth} levels"
                )));
            }
        }
        // `cloudevent.traceparent` names the context the event continues, like the header.
        let asked = (metadata.overrides.traceparent.as_deref())
            .filter(|t| crate::model::trace::is_valid_traceparent(t));
        let (traceparent, span) = self
            .tracer
            .begin_publish(asked.or(caller.traceparent.as_deref()));
        let mut overrides = Cow::Borrowed(&metadata.overrides);
        if self.tracer.enabled() && asked.is_some() {
            // Stored is the publish span's context, a child of the one asked for.
            overrides.to_mut().traceparent = None;
        }
        if metadata.raw_payload {
            if cloudevent::is_json(content_type) {
                if let Some(raw) = body.json() {
                    self.check_platform_event(raw)?;
                }
            }
            let event_id = metadata
                .overrides
                .id
                .clone()
                .unwrap_or_else(crate::model::new_event_id);
            let envelope = Envelope {
                key: metadata
                    .partition_key
                    .clone()
                    .unwrap_or_else(|| event_id.clone()),
                event_id,
                topic: target.to_string(),
                event_type: String::new(),
                sequence: None,
                received_us,
                service: caller.app_id.clone().unwrap_or_default(),
                correlation_id: String::new(),
                traceparent,
                tracestate: caller.tracestate.clone(),
                payload: body.bytes().to_vec(),
                format: PayloadFormat::Raw,
                content_type: (!content_type.is_empty()).then(|| content_type.to_string()),
                expires_us,
            };
            return Ok((envelope, span));
        }
        let meta = PublishMeta {
            content_type,
            pubsubname: pubsub,
            topic,
            source: caller.app_id.as_deref().unwrap_or("evrouter"),
            overrides,
            traceparent: Some(traceparent),
            tracestate: caller.tracestate.as_deref(),
            expires_us,
        };
        let event = cloudevent::build_parts(body, &meta).map_err(|e| match e {
            CloudEventError::NotAnObject(_)
            | CloudEventError::NotAString(_)
            | CloudEventError::SpecVersion(_)
            | CloudEventError::BadAttribute { .. } => DaprRefusal::BadCloudEvent(e.to_string()),
        })?;
        // A platform event is validated as data of a CloudEvent, whether evrouter wrapped
        // it or the publisher sent the CloudEvent whole.
        match (event.raw_data, event.rest.get("data")) {
            (Some(data), _) => self.check_platform_event(data)?,
            (None, Some(data @ Value::Object(_))) => {
                if let Ok(raw) = serde_json::value::to_raw_value(data) {
                    self.check_platform_event(&raw)?
                }
            }
            _ => {}
        }
        let payload = event.to_vec();
        let envelope = Envelope {
            key: metadata
                .partition_key
                .clone()
                .unwrap_or_else(|| event.id.clone()),
            topic: target.to_string(),
            event_type: event.event_type,
            sequence: None,
            received_us,
            service: event.source,
            correlation_id: String::new(),
            traceparent: event.traceparent,
            tracestate: Some(event.tracestate).filter(|t| !t.is_empty()),
            payload,
            format: PayloadFormat::CloudEvent,
            content_type: None,
            expires_us,
            event_id: event.id,
        };
        Ok((envelope, span))
    }
}

/// The bytes of one bulk entry's `event` (JSON text as sent): a JSON string of a non-JSON
/// content type is its content, base64-decoded for `application/octet-stream` (as Dapr's
/// SDKs send bytes); anything else stays the JSON text.
pub fn bulk_entry_body<'a>(raw: &'a str, content_type: &str) -> Cow<'a, [u8]> {
    let text = (!cloudevent::is_json(content_type))
        .then(|| serde_json::from_str::<String>(raw).ok())
        .flatten();
    match text {
        Some(text) if content_type == "application/octet-stream" => {
            use base64::Engine;
            Cow::Owned(
                base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .unwrap_or_else(|_| text.into_bytes()),
            )
        }
        Some(text) => Cow::Owned(text.into_bytes()),
        None => Cow::Borrowed(raw.as_bytes()),
    }
}

/// Publishes the events Dapr subscriptions hand over for their `deadLetterTopic`, so that
/// the topic's subscribers get them, as a publish of the app's principal would be: within
/// its publish rights and its quota (`publishers`, by app id; an app without one publishes
/// nothing). A failed publish is tried again a few times (the event is in the
/// subscription's DLQ in any case).
pub fn spawn_forwarder(
    api: Arc<DaprPubsubs>,
    publisher: Arc<Publisher>,
    publishers: HashMap<String, Arc<Principal>>,
    mut letters: mpsc::Receiver<Forward>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(letter) = letters.recv().await {
            let refused = |why: &dyn std::fmt::Display| {
                tracing::warn!(app = %letter.app_id, topic = %letter.topic, %why, "event not published to its dead-letter topic; it stays in the DLQ");
            };
            let Some(principal) = publishers.get(&letter.app_id) else {
                refused(&"the app has no principal to publish with (dapr.apps[].principal)");
                continue;
            };
            let structured = &*letter.content_type == cloudevent::CLOUDEVENTS_JSON;
            let metadata = Metadata {
                raw_payload: !structured,
                ..Metadata::default()
            };
            let content_type = letter.content_type.to_string();
            let built = api
                .target(&letter.pubsub, &letter.topic)
                .and_then(|target| {
                    let route = Route {
                        pubsub: &letter.pubsub,
                        topic: &letter.topic,
                        target: &target,
                    };
                    let envelope = api.envelope(
                        route,
                        Body::Bytes(&letter.body),
                        &content_type,
                        &metadata,
                        &Caller::default(),
                        Depth::Limit(publisher.limits().max_depth),
                    )?;
                    Ok((target, envelope))
                });
            let (target, (mut envelope, span)) = match built {
                Ok(built) => built,
                Err(err) => {
                    refused(&err);
                    continue;
                }
            };
            if let Err(denied) = principal.may_publish(&target) {
                refused(&denied);
                continue;
            }
            // Marks it as dead-lettered once (see `Forward`).
            envelope.service = FORWARDER_SERVICE.to_string();
            let mut span = span;
            for attempt in 1..=5u32 {
                if let Err(limited) =
                    principal
                        .quota
                        .admit(&principal.name, 1, envelope.payload.len())
                {
                    match limited.retry_after {
                        Some(wait) if attempt < 5 => {
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        _ => {
                            refused(&limited);
                            break;
                        }
                    }
                }
                match publisher
                    // The publish span is recorded once, with the first try.
                    .publish_envelopes(&target, vec![(envelope.clone(), span.take())])
                    .await
                {
                    Ok(_) => break,
                    // Only a store that is unavailable can change its mind.
                    Err(err) if attempt == 5 || !matches!(err, PublishError::Unavailable(_)) => {
                        refused(&err);
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(
                            200 * u64::from(attempt),
                        ))
                        .await
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_topics_map_to_evrouter_topics() {
        assert_eq!(map_topic("", "orders").as_deref(), Some("orders"));
        assert_eq!(
            map_topic("", "order/Created").as_deref(),
            Some("order.created")
        );
        assert_eq!(
            map_topic("billing.", "invoices").as_deref(),
            Some("billing.invoices")
        );
        assert_eq!(map_topic("", "a//b"), None);
        assert_eq!(map_topic("", "has space"), None);
    }

    #[test]
    fn unknown_pubsubs_and_forbidden_topics_are_refused() {
        let api = DaprPubsubs::new(&DaprConfig {
            pubsubs: vec![DaprPubsubConfig {
                name: "pubsub".into(),
                topic_prefix: String::new(),
                allowed_topics: vec!["orders".into()],
            }],
            ..DaprConfig::default()
        });
        assert_eq!(api.target("pubsub", "orders").expect("ok"), "orders");
        assert!(matches!(
            api.target("other", "orders"),
            Err(DaprRefusal::PubsubNotFound(_))
        ));
        assert!(matches!(
            api.target("pubsub", ""),
            Err(DaprRefusal::TopicEmpty(_))
        ));
        assert!(matches!(
            api.target("pubsub", "payments"),
            Err(DaprRefusal::TopicForbidden { .. })
        ));
    }
}
