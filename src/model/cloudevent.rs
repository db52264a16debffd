//! CloudEvents as Dapr makes them: the envelope around a published body (or the body
//! itself when it already is one), and the CloudEvent a Dapr app receives for an event
//! stored in any format.

use base64::Engine;
use serde_json::{Map, Value};

use std::time::UNIX_EPOCH;

use super::clock::now_rfc3339;
use super::envelope::PayloadFormat;

/// The `type` Dapr gives an event it wraps.
pub const DEFAULT_TYPE: &str = "com.dapr.event.sent";
/// The content type of a CloudEvent in structured mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// What the publish request says about the event, apart from its body.
#[derive(Debug, Default, Clone)]
pub struct PublishMeta {
    /// The request's content type, without parameters, lower-cased (empty when none).
    pub content_type: String,
    /// The pubsub name of the request.
    pub pubsubname: String,
    /// The topic, as the app named it.
    pub topic: String,
    /// `source` when the event has none (the publishing app's id, when it says).
    pub source: String,
    /// `metadata.cloudevent.*` overrides: id, source, type, traceid, traceparent, tracestate.
    pub overrides: Overrides,
    /// The request's W3C trace context.
    pub traceparent: Option<String>,
    /// The request's `tracestate`.
    pub tracestate: Option<String>,
    /// `metadata.ttlInSeconds`, as an absolute expiry (µs since the epoch).
    pub expires_us: Option<u64>,
}

/// CloudEvent attributes a publisher sets through `metadata.cloudevent.*`.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `metadata.cloudevent.id`.
    pub id: Option<String>,
    /// `metadata.cloudevent.source`.
    pub source: Option<String>,
    /// `metadata.cloudevent.type`.
    pub event_type: Option<String>,
    /// `metadata.cloudevent.traceid`.
    pub traceid: Option<String>,
    /// `metadata.cloudevent.traceparent`.
    pub traceparent: Option<String>,
    /// `metadata.cloudevent.tracestate`.
    pub tracestate: Option<String>,
}

/// Why a body cannot become a CloudEvent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudEventError {
    /// A structured-mode body that is not a JSON object.
    #[error("the body is not a CloudEvent: {0}")]
    NotAnObject(String),
    /// A CloudEvent attribute of the wrong type.
    #[error("CloudEvent attribute `{0}` must be a string")]
    NotAString(&'static str),
    /// `specversion` other than 1.0.
    #[error("CloudEvent specversion `{0}` is not supported (only 1.0)")]
    SpecVersion(String),
    /// `id`, `source` or `type` empty, too long, or holding control characters.
    #[error("CloudEvent attribute `{name}` {why}")]
    BadAttribute {
        /// The attribute.
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// Longest `id` and `type` taken (`source`, a URI reference, may be four times longer).
pub const MAX_ATTRIBUTE_CHARS: usize = 256;

/// Checks what identifies a CloudEvent and is shown wherever it is listed: `id`, `source`
/// and `type` are non-empty strings without control characters, of bounded length.
fn check_identity(event: &Map<String, Value>) -> Result<(), CloudEventError> {
    for (name, max) in [
        ("id", MAX_ATTRIBUTE_CHARS),
        ("type", MAX_ATTRIBUTE_CHARS),
        ("source", 4 * MAX_ATTRIBUTE_CHARS),
    ] {
        let value = event.get(name).and_then(Value::as_str).unwrap_or_default();
        let why = if value.is_empty() {
            "must not be empty".to_string()
        } else if value.chars().count() > max {
            format!("is longer than {max} characters")
        } else if value.chars().any(char::is_control) {
            "must not hold control characters".to_string()
        } else {
            continue;
        };
        return Err(CloudEventError::BadAttribute { name, why });
    }
    Ok(())
}

/// Whether a content type is JSON (`application/json`, any `+json`, `text/json`).
pub fn is_json(content_type: &str) -> bool {
    content_type == "application/json"
        || content_type == "text/json"
        || content_type.ends_with("+json")
}

/// The content type's essence: without parameters, trimmed and lower-cased.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Builds the CloudEvent of a publish: `body` is parsed as a CloudEvent when the request
/// says `application/cloudevents+json` (missing attributes are filled), otherwise it is
/// the event's data and is wrapped as Dapr wraps it.
pub fn build(body: &[u8], meta: &PublishMeta) -> Result<Map<String, Value>, CloudEventError> {
    build_parts(body, meta).map(Built::into_map)
}

/// A CloudEvent made by [`build_parts`]: its attributes, and JSON `data` kept as the raw
/// text that was published (not parsed into a tree and written out again).
#[derive(Debug)]
pub struct Built {
    /// Every attribute, and `data` / `data_base64` when they are not raw JSON.
    pub attrs: Map<String, Value>,
    /// JSON `data`, as published.
    pub raw_data: Option<Box<serde_json::value::RawValue>>,
}

impl Built {
    /// The CloudEvent as JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.attrs).unwrap_or_default();
        if let Some(data) = &self.raw_data {
            // `attrs` is never empty (it has at least `id`): `{…}` becomes `{…,"data":…}`.
            out.pop();
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.get().as_bytes());
            out.push(b'}');
        }
        out
    }

    /// The CloudEvent as one tree.
    pub fn into_map(self) -> Map<String, Value> {
        let mut attrs = self.attrs;
        if let Some(data) = self.raw_data {
            if let Ok(value) = serde_json::from_str::<Value>(data.get()) {
                attrs.insert("data".into(), value);
            }
        }
        attrs
    }
}

/// Builds the CloudEvent of a publish, as [`build`] does, keeping JSON data raw.
pub fn build_parts(body: &[u8], meta: &PublishMeta) -> Result<Built, CloudEventError> {
    let mut raw_data = None;
    let mut event = if meta.content_type == CLOUDEVENTS_JSON {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CloudEventError::NotAnObject("not a JSON object".into())),
            Err(err) => return Err(CloudEventError::NotAnObject(err.to_string())),
        }
    } else {
        let raw = serde_json::from_slice::<Box<serde_json::value::RawValue>>(body).ok();
        let content_type = match (meta.content_type.as_str(), &raw) {
            ("", Some(_)) => "application/json",
            ("", None) => "text/plain",
            (given, _) => given,
        };
        match raw {
            Some(raw) if is_json(content_type) => {
                raw_data = Some(raw);
                let mut map = Map::new();
                map.insert(
                    "datacontenttype".into(),
                    Value::String(content_type.to_string()),
                );
                map.insert("type".into(), Value::String(DEFAULT_TYPE.into()));
                map
            }
            _ => wrap_data(body, content_type),
        }
    };
    for name in ["id", "source", "type", "specversion", "datacontenttype"] {
        if event.get(name).is_some_and(|v| !v.is_string()) {
            return Err(CloudEventError::NotAString(match name {
                "id" => "id",
                "source" => "source",
                "type" => "type",
                "specversion" => "specversion",
                _ => "datacontenttype",
            }));
        }
    }
    let o = &meta.overrides;
    let mut set = |name: &str, forced: Option<&String>, default: &dyn Fn() -> String| match forced {
        Some(value) => {
            event.insert(name.into(), Value::String(value.clone()));
        }
        None => {
            if !event.get(name).is_some_and(|v| v.is_string()) {
                event.insert(name.into(), Value::String(default()));
            }
        }
    };
    set("id", o.id.as_ref(), &|| uuid::Uuid::new_v4().to_string());
    set("source", o.source.as_ref(), &|| meta.source.clone());
    set("type", o.event_type.as_ref(), &|| DEFAULT_TYPE.to_string());
    set("specversion", None, &|| "1.0".to_string());
    set("datacontenttype", None, &|| "application/json".to_string());
    set("time", None, &now_rfc3339);
    let traceparent = o
        .traceparent
        .clone()
        .or_else(|| {
            meta.traceparent
                .clone()
                .filter(|t| super::trace::is_valid_traceparent(t))
        })
        .unwrap_or_else(super::trace::new_traceparent);
    set("traceparent", o.traceparent.as_ref(), &|| {
        traceparent.clone()
    });
    set("traceid", o.traceid.as_ref(), &|| traceparent.clone());
    let tracestate = o
        .tracestate
        .clone()
        .or_else(|| meta.tracestate.clone())
        .unwrap_or_default();
    set("tracestate", o.tracestate.as_ref(), &|| tracestate.clone());
    event.insert("topic".into(), Value::String(meta.topic.clone()));
    event.insert("pubsubname".into(), Value::String(meta.pubsubname.clone()));
    if let Some(expires) = meta.expires_us {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(expires);
        event.insert(
            "expiration".into(),
            Value::String(humantime::format_rfc3339_millis(at).to_string()),
        );
    }
    check_identity(&event)?;
    match event.get("specversion").and_then(Value::as_str) {
        Some("1.0") | None => Ok(Built {
            attrs: event,
            raw_data,
        }),
        Some(other) => Err(CloudEventError::SpecVersion(other.to_string())),
    }
}

/// Wraps a body that is not a CloudEvent: JSON stays JSON under `data`,
/// `application/octet-stream` (or anything not UTF-8) goes to `data_base64`, other content
/// is a string under `data`.
fn wrap_data(body: &[u8], content_type: &str) -> Map<String, Value> {
    let mut event = Map::new();
    let content_type = if content_type.is_empty() {
        // Dapr's SDKs always say; a bare request that sent JSON is taken as JSON.
        if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            "application/json"
        } else {
            "text/plain"
        }
    } else {
        content_type
    };
    event.insert(
        "datacontenttype".into(),
        Value::String(content_type.to_string()),
    );
    event.insert("type".into(), Value::String(DEFAULT_TYPE.into()));
    let text = std::str::from_utf8(body).ok();
    if is_json(content_type) {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => {
                event.insert("data".into(), value);
            }
            // Dapr keeps a body that claims JSON but is not as a string.
            Err(_) => {
                event.insert(
                    "data".into(),
                    Value::String(String::from_utf8_lossy(body).into_owned()),
                );
            }
        }
    } else if let (false, Some(text)) = (content_type == "application/octet-stream", text) {
        // As Dapr: only binary content goes to base64; text, XML and the like stay text.
        event.insert("data".into(), Value::String(text.to_string()));
    } else {
        event.insert(
            "data_base64".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
        );
    }
    event
}

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

    fn meta(content_type: &str) -> PublishMeta {
        PublishMeta {
            content_type: content_type.into(),
            pubsubname: "pubsub".into(),
            topic: "orders".into(),
            source: "checkout".into(),
            ..PublishMeta::default()
        }
    }

    #[test]
    fn json_data_is_wrapped_as_an_object() {
        let event = build(br#"{"order_id":"o1"}"#, &meta("application/json")).expect("ce");
        assert_eq!(event["data"]["order_id"], "o1");
        assert_eq!(event["type"], DEFAULT_TYPE);
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "checkout");
        assert_eq!(event["topic"], "orders");
        assert_eq!(event["pubsubname"], "pubsub");
        assert!(event["id"].as_str().is_some_and(|id| id.len() == 36));
        assert_eq!(event["traceid"], event["traceparent"]);
        assert!(event.contains_key("time"));
    }

    #[test]
    fn json_data_is_kept_as_published_text() {
        let body = br#"{"b": [1, 2.50, "x"], "a": {}}"#;
        let built = build_parts(body, &meta("application/json")).expect("ce");
        let text = built.to_vec();
        let written = std::str::from_utf8(&text).expect("utf-8");
        assert!(
            written.ends_with(r#","data":{"b": [1, 2.50, "x"], "a": {}}}"#),
            "{written}"
        );
        let parsed: Value = serde_json::from_slice(&text).expect("valid JSON");
        assert_eq!(parsed, Value::Object(built.into_map()));
    }

    #[test]
    fn text_stays_text_and_bytes_go_to_base64() {
        let text = build(b"hello", &meta("text/plain")).expect("ce");
        assert_eq!(text["data"], "hello");
        let bytes = build(&[0, 1, 2, 255], &meta("application/octet-stream")).expect("ce");
        assert_eq!(bytes["data_base64"], "AAEC/w==");
        assert!(!bytes.contains_key("data"));
        let xml = build(b"<a/>", &meta("application/xml")).expect("ce");
        assert_eq!(xml["data"], "<a/>");
        let binary = build(&[0xff, 0xfe], &meta("application/x-thing")).expect("ce");
        assert_eq!(binary["data_base64"], "//4=");
    }

    #[test]
    fn a_cloudevent_keeps_its_attributes_and_gets_the_missing_ones() {
        let body = br#"{"specversion":"1.0","id":"e1","source":"s","type":"t","data":{"a":1}}"#;
        let event = build(body, &meta(CLOUDEVENTS_JSON)).expect("ce");
        assert_eq!(event["id"], "e1");
        assert_eq!(event["type"], "t");
        assert_eq!(event["source"], "s");
        assert_eq!(event["topic"], "orders");
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(event.contains_key("traceparent"));
        assert!(matches!(
            build(b"[1]", &meta(CLOUDEVENTS_JSON)),
            Err(CloudEventError::NotAnObject(_))
        ));
        assert!(matches!(
            build(br#"{"id":5}"#, &meta(CLOUDEVENTS_JSON)),
            Err(CloudEventError::NotAString("id"))
        ));
        assert!(matches!(
            build(br#"{"specversion":"0.3"}"#, &meta(CLOUDEVENTS_JSON)),
            Err(CloudEventError::SpecVersion(_))
        ));
    }

    #[test]
    fn overrides_win() {
        let mut m = meta("application/json");
        m.overrides.id = Some("fixed".into());
        m.overrides.event_type = Some("order.created".into());
        m.overrides.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let event = build(b"{}", &m).expect("ce");
        assert_eq!(event["id"], "fixed");
        assert_eq!(event["type"], "order.created");
        assert_eq!(
            event["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

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
