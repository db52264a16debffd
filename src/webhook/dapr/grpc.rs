//! Delivery to a Dapr app that speaks gRPC (`protocol = "grpc"`): its subscriptions are
//! read with `AppCallback/ListTopicSubscriptions`, its events sent with `OnTopicEvent`
//! and `OnBulkTopicEvent` (falling back to `AppCallbackAlpha/OnBulkTopicEventAlpha1`, as
//! daprd does), and its answers read by Dapr's rules: SUCCESS acks, RETRY retries, DROP
//! drops; UNIMPLEMENTED drops, any other gRPC error retries. Its health is asked with
//! `AppCallbackHealthCheck/HealthCheck`. The messages and clients are the `dapr` crate's
//! generated ones.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as pb;
use pb::app_callback_alpha_client::AppCallbackAlphaClient;
use pb::app_callback_client::AppCallbackClient;
use pb::app_callback_health_check_client::AppCallbackHealthCheckClient;
use pb::topic_event_response::TopicEventResponseStatus;
use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::delivery::transport::Outcome;
use crate::model::subscription::DaprTarget;

/// A gRPC app's channel (one HTTP/2 connection, made when first used).
#[derive(Clone)]
pub struct AppChannel {
    channel: Channel,
}

/// How a gRPC call ended: whether the app looks healthy, and one outcome per event.
pub struct Called {
    pub healthy: bool,
    pub outcomes: Vec<Outcome>,
}

/// One event to send: its entry id (bulk), body as presented and content type.
pub struct Event<'a> {
    pub entry_id: String,
    pub body: &'a Bytes,
    pub content_type: &'a str,
}

/// What a call sends besides the events.
pub struct CallContext<'a> {
    pub target: &'a DaprTarget,
    pub path: &'a str,
    pub timeout: Duration,
    pub app_token: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

impl AppChannel {
    /// A channel to `url` (`http://host:port`); `None` when it is not a URL.
    pub fn new(url: &str) -> Option<Self> {
        let channel = Channel::from_shared(url.to_string()).ok()?.connect_lazy();
        Some(Self { channel })
    }

    fn request<T>(&self, message: T, context: &CallContext) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(context.timeout);
        let metadata = request.metadata_mut();
        if let Some(token) = context.app_token.and_then(|t| t.parse().ok()) {
            metadata.insert("dapr-api-token", token);
        }
        if let Some(trace) = context.traceparent.and_then(|t| t.parse().ok()) {
            metadata.insert("traceparent", trace);
        }
        request
    }

    /// The app's subscriptions; an app that does not serve the call has none.
    pub async fn subscriptions(
        &self,
        timeout: Duration,
        app_token: Option<&str>,
    ) -> Result<Vec<pb::TopicSubscription>, String> {
        let mut request = tonic::Request::new(());
        request.set_timeout(timeout);
        if let Some(token) = app_token.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("dapr-api-token", token);
        }
        match AppCallbackClient::new(self.channel.clone())
            .list_topic_subscriptions(request)
            .await
        {
            Ok(answer) => Ok(answer.into_inner().subscriptions),
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(Vec::new()),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Whether the app answers `AppCallbackHealthCheck/HealthCheck` with OK in time.
    pub async fn healthy(&self, timeout: Duration, app_token: Option<&str>) -> bool {
        let mut request = tonic::Request::new(());
        request.set_timeout(timeout);
        if let Some(token) = app_token.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("dapr-api-token", token);
        }
        let mut client = AppCallbackHealthCheckClient::new(self.channel.clone());
        let call = client.health_check(request);
        matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(_)))
    }

    /// Sends one event with `OnTopicEvent`.
    pub async fn send_one(&self, event: &Event<'_>, context: &CallContext<'_>) -> Called {
        let message = topic_event(event, context);
        let request = self.request(message, context);
        match AppCallbackClient::new(self.channel.clone())
            .on_topic_event(request)
            .await
        {
            Ok(answer) => Called {
                healthy: true,
                outcomes: vec![status_outcome(answer.get_ref().status)],
            },
            Err(status) => failed(&status, 1),
        }
    }

    /// Sends events with `OnBulkTopicEvent` (or its Alpha1 name when the app only has
    /// that one); each entry's status is its outcome, a missing one is retried.
    pub async fn send_bulk(&self, events: &[Event<'_>], context: &CallContext<'_>) -> Called {
        let message = pb::TopicEventBulkRequest {
            id: format!("{:032x}", fastrand::u128(..)),
            entries: events.iter().map(bulk_entry).collect(),
            metadata: HashMap::new(),
            topic: context.target.topic.clone(),
            pubsub_name: context.target.pubsubname.clone(),
            r#type: "com.dapr.event.sent.bulk".into(),
            path: context.path.to_string(),
        };
        let request = self.request(message.clone(), context);
        let mut answer = AppCallbackClient::new(self.channel.clone())
            .on_bulk_topic_event(request)
            .await;
        if matches!(&answer, Err(s) if s.code() == tonic::Code::Unimplemented) {
            let request = self.request(message, context);
            // Deprecated by Dapr, yet what daprd falls back to, and the only bulk call the
            // JavaScript SDK's server serves.
            #[allow(deprecated)]
            let alpha = AppCallbackAlphaClient::new(self.channel.clone())
                .on_bulk_topic_event_alpha1(request)
                .await;
            answer = alpha;
        }
        match answer {
            Ok(answer) => {
                let statuses: HashMap<&str, i32> = answer
                    .get_ref()
                    .statuses
                    .iter()
                    .map(|s| (s.entry_id.as_str(), s.status))
                    .collect();
                Called {
                    healthy: true,
                    outcomes: events
                        .iter()
                        .map(|e| match statuses.get(e.entry_id.as_str()) {
                            Some(status) => status_outcome(*status),
                            None => Outcome::Retry("the app gave no status for the entry".into()),
                        })
                        .collect(),
                }
            }
            Err(status) => failed(&status, events.len()),
        }
    }
}

/// An answer's status by Dapr's rules (a value it does not know is retried).
fn status_outcome(status: i32) -> Outcome {
    match TopicEventResponseStatus::try_from(status) {
        Ok(TopicEventResponseStatus::Success) => Outcome::Delivered,
        Ok(TopicEventResponseStatus::Retry) => Outcome::Retry("the app answered RETRY".into()),
        Ok(TopicEventResponseStatus::Drop) => Outcome::Drop("the app answered DROP".into()),
        Err(_) => Outcome::Retry(format!("the app answered unknown status {status}")),
    }
}

/// A call that failed: UNIMPLEMENTED drops (the app has no handler), anything else is
/// retried; no answer at all counts against the app's health.
fn failed(status: &tonic::Status, n: usize) -> Called {
    let outcome = match status.code() {
        tonic::Code::Unimplemented => Outcome::Drop(format!(
            "the app answered UNIMPLEMENTED: {}",
            status.message()
        )),
        code => Outcome::Retry(format!("the app answered {code:?}: {}", status.message())),
    };
    let healthy = !matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    );
    Called {
        healthy,
        outcomes: vec![outcome; n],
    }
}

/// The parts of a presented CloudEvent: its attributes, data and the other extensions.
struct CloudEvent {
    id: String,
    source: String,
    kind: String,
    spec_version: String,
    data_content_type: String,
    data: Vec<u8>,
    extensions: Map<String, Value>,
}

/// `body` read as a CloudEvent, if it is one.
fn cloud_event(event: &Event) -> Option<CloudEvent> {
    if !event.content_type.contains("json") {
        return None;
    }
    let Value::Object(mut fields) = serde_json::from_slice(event.body).ok()? else {
        return None;
    };
    if !fields.contains_key("specversion") {
        return None;
    }
    let mut text = |key: &str| match fields.remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let (id, source, kind, spec_version) = (
        text("id"),
        text("source"),
        text("type"),
        text("specversion"),
    );
    let data_content_type = text("datacontenttype");
    let data = match (fields.remove("data_base64"), fields.remove("data")) {
        (Some(Value::String(b64)), _) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default(),
        (_, Some(Value::String(s))) if !data_content_type.contains("json") => s.into_bytes(),
        (_, Some(value)) => serde_json::to_vec(&value).unwrap_or_default(),
        (_, None) => Vec::new(),
    };
    fields.remove("topic");
    fields.remove("pubsubname");
    Some(CloudEvent {
        id,
        source,
        kind,
        spec_version,
        data_content_type,
        data,
        extensions: fields,
    })
}

/// The `OnTopicEvent` request of one event: a CloudEvent's attributes, or a raw payload
/// as its data.
fn topic_event(event: &Event, context: &CallContext) -> pb::TopicEventRequest {
    let (topic, pubsub_name, path) = (
        context.target.topic.clone(),
        context.target.pubsubname.clone(),
        context.path.to_string(),
    );
    match cloud_event(event) {
        Some(ce) => pb::TopicEventRequest {
            id: ce.id,
            source: ce.source,
            r#type: ce.kind,
            spec_version: ce.spec_version,
            data_content_type: ce.data_content_type,
            data: ce.data,
            topic,
            pubsub_name,
            path,
            extensions: Some(to_struct(ce.extensions)),
        },
        None => pb::TopicEventRequest {
            data: event.body.to_vec(),
            data_content_type: event.content_type.to_string(),
            topic,
            pubsub_name,
            path,
            ..Default::default()
        },
    }
}

/// One entry of an `OnBulkTopicEvent` request.
fn bulk_entry(event: &Event) -> pb::TopicEventBulkRequestEntry {
    use pb::topic_event_bulk_request_entry::Event as Entry;
    let entry = match cloud_event(event) {
        Some(ce) => Entry::CloudEvent(pb::TopicEventCeRequest {
            id: ce.id,
            source: ce.source,
            r#type: ce.kind,
            spec_version: ce.spec_version,
            data_content_type: ce.data_content_type,
            data: ce.data,
            extensions: Some(to_struct(ce.extensions)),
        }),
        None => Entry::Bytes(event.body.to_vec()),
    };
    pb::TopicEventBulkRequestEntry {
        entry_id: event.entry_id.clone(),
        content_type: event.content_type.to_string(),
        metadata: HashMap::new(),
        event: Some(entry),
    }
}

fn to_struct(fields: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(to_struct(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}
