//! The CloudEvent a Dapr app receives for an event stored in any format.

use serde_json::Value;

use std::time::UNIX_EPOCH;

use super::wrap_data;
use crate::model::envelope::PayloadFormat;

/// The fields of a stored event a CloudEvent is built from.
pub struct Stored<'a> {
    /// Its format.
    pub format: PayloadFormat,
    /// The stored payload.
    pub payload: &'a [u8],
    /// Its content type when raw.
    pub content_type: Option<&'a str>,
    /// `event_id`.
    pub event_id: &'a str,
    /// `event_type`.
    pub event_type: &'a str,
    /// The publishing service.
    pub service: &'a str,
    /// Its trace context.
    pub traceparent: &'a str,
    /// When evrouter received it.
    pub received_us: u64,
}

/// The CloudEvent a Dapr app receives for `stored`, subscribed as `pubsubname`/`topic`:
/// a stored CloudEvent as is; a platform event wrapped with its id, type, service and
/// trace context; raw bytes wrapped like a data publish.
pub fn present(stored: &Stored<'_>, pubsubname: &str, topic: &str) -> Value {
    let mut event = match stored.format {
        PayloadFormat::CloudEvent => match serde_json::from_slice::<Value>(stored.payload) {
            Ok(Value::Object(map)) => map,
            _ => wrap_data(stored.payload, "application/json"),
        },
        PayloadFormat::Raw => {
            let mut map = wrap_data(stored.payload, stored.content_type.unwrap_or_default());
            map.insert("id".into(), Value::String(stored.event_id.to_string()));
            map
        }
        PayloadFormat::Event => {
            let mut map = wrap_data(stored.payload, "application/json");
            map.insert("id".into(), Value::String(stored.event_id.to_string()));
            map.insert("type".into(), Value::String(stored.event_type.to_string()));
            map
        }
    };
    let received = UNIX_EPOCH + std::time::Duration::from_micros(stored.received_us);
    let mut fill = |name: &str, value: String| {
        if !event.get(name).is_some_and(Value::is_string) {
            event.insert(name.into(), Value::String(value));
        }
    };
    fill(
        "source",
        if stored.service.is_empty() {
            "evrouter".into()
        } else {
            stored.service.to_string()
        },
    );
    fill("specversion", "1.0".into());
    fill(
        "time",
        humantime::format_rfc3339_micros(received).to_string(),
    );
    fill("traceparent", stored.traceparent.to_string());
    fill("traceid", stored.traceparent.to_string());
    event.insert("topic".into(), Value::String(topic.to_string()));
    event.insert("pubsubname".into(), Value::String(pubsubname.to_string()));
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_events_are_presented_as_cloudevents() {
        let payload = br#"{"event_id":"evt_1","event_type":"order.created","data":{"x":1}}"#;
        let stored = Stored {
            format: PayloadFormat::Event,
            payload,
            content_type: None,
            event_id: "evt_1",
            event_type: "order.created",
            service: "order-service",
            traceparent: "tp",
            received_us: 0,
        };
        let event = present(&stored, "pubsub", "order.created");
        assert_eq!(event["id"], "evt_1");
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["source"], "order-service");
        assert_eq!(event["data"]["data"]["x"], 1);
        assert_eq!(event["topic"], "order.created");
    }
}
