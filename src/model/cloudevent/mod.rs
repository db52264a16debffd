//! CloudEvents as Dapr makes them: the envelope around a published body (or the body
//! itself when it already is one), and the CloudEvent a Dapr app receives for an event
//! stored in any format.

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

use super::clock::now_rfc3339;

mod present;

pub use present::{present, Stored};

/// The `type` Dapr gives an event it wraps.
pub const DEFAULT_TYPE: &str = "com.dapr.event.sent";
/// The content type of a CloudEvent in structured mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// What the publish request says about the event, apart from its body, borrowed from the
/// request.
#[derive(Debug, Default, Clone)]
pub struct PublishMeta<'a> {
    /// The request's content type, without parameters, lower-cased (empty when none).
    pub content_type: &'a str,
    /// The pubsub name of the request.
    pub pubsubname: &'a str,
    /// The topic, as the app named it.
    pub topic: &'a str,
    /// `source` when the event has none (the publishing app's id, when it says).
    pub source: &'a str,
    /// `metadata.cloudevent.*` overrides: id, source, type, traceid, traceparent, tracestate.
    pub overrides: Cow<'a, Overrides>,
    /// The publish's W3C trace context, well-formed (the caller checked or made it).
    pub traceparent: Option<String>,
    /// The request's `tracestate`.
    pub tracestate: Option<&'a str>,
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

/// A published body: bytes as received, or JSON text already read as JSON (an entry of a
/// bulk body), which is then not scanned again.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// The bytes of the request.
    Bytes(&'a [u8]),
    /// JSON text, known to be well-formed.
    Json(&'a RawValue),
}

impl<'a> Body<'a> {
    /// The body's bytes.
    pub fn bytes(self) -> &'a [u8] {
        match self {
            Body::Bytes(bytes) => bytes,
            Body::Json(raw) => raw.get().as_bytes(),
        }
    }

    /// The body as JSON text, when it is well-formed JSON.
    pub fn json(self) -> Option<&'a RawValue> {
        match self {
            Body::Bytes(bytes) => serde_json::from_slice(bytes).ok(),
            Body::Json(raw) => Some(raw),
        }
    }
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
fn check_identity(event: &Built<'_>) -> Result<(), CloudEventError> {
    for (name, value, max) in [
        ("id", &event.id, MAX_ATTRIBUTE_CHARS),
        ("type", &event.event_type, MAX_ATTRIBUTE_CHARS),
        ("source", &event.source, 4 * MAX_ATTRIBUTE_CHARS),
    ] {
        let (chars, control) = if value.is_ascii() {
            let bytes = value.as_bytes();
            (bytes.len(), bytes.iter().any(u8::is_ascii_control))
        } else {
            (value.chars().count(), value.chars().any(char::is_control))
        };
        let why = if value.is_empty() {
            "must not be empty".to_string()
        } else if chars > max {
            format!("is longer than {max} characters")
        } else if control {
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

/// The content type's essence: without parameters, trimmed and lower-cased (borrowed
/// when it is already so).
pub fn essence(content_type: &str) -> Cow<'_, str> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(essence.to_ascii_lowercase())
    } else {
        Cow::Borrowed(essence)
    }
}

/// A CloudEvent made by [`build_parts`]: the attributes every event has, the others, and
/// JSON `data` kept as the text that was published (not parsed into a tree and written
/// out again). `specversion` is always 1.0.
#[derive(Debug)]
pub struct Built<'a> {
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub event_type: String,
    /// `datacontenttype`.
    pub datacontenttype: Cow<'a, str>,
    /// `time`.
    pub time: String,
    /// `traceparent`.
    pub traceparent: String,
    /// `traceid`.
    pub traceid: String,
    /// `tracestate` (empty when there is none).
    pub tracestate: String,
    /// `topic`, as the app named it.
    pub topic: &'a str,
    /// `pubsubname`.
    pub pubsubname: &'a str,
    /// `expiration`, when the publish gave a time to live.
    pub expiration: Option<String>,
    /// Every other attribute, and `data` / `data_base64` when they are not raw JSON.
    pub rest: Map<String, Value>,
    /// JSON `data`, as published.
    pub raw_data: Option<&'a RawValue>,
}

impl Built<'_> {
    /// The CloudEvent as JSON text, written field by field.
    pub fn to_vec(&self) -> Vec<u8> {
        let data = self.raw_data.map_or("", |data| data.get());
        let mut out = Vec::with_capacity(data.len() + 384);
        out.extend_from_slice(br#"{"specversion":"1.0""#);
        // The attributes every event has: their names need no escaping.
        for (name, value) in [
            (&br#","id":"#[..], self.id.as_str()),
            (br#","source":"#, &self.source),
            (br#","type":"#, &self.event_type),
            (br#","datacontenttype":"#, &self.datacontenttype),
            (br#","time":"#, &self.time),
            (br#","topic":"#, self.topic),
            (br#","pubsubname":"#, self.pubsubname),
            (br#","traceid":"#, &self.traceid),
            (br#","traceparent":"#, &self.traceparent),
            (br#","tracestate":"#, &self.tracestate),
        ] {
            out.extend_from_slice(name);
            json_string(&mut out, value);
        }
        if let Some(expiration) = &self.expiration {
            attribute(&mut out, "expiration", expiration);
        }
        for (name, value) in &self.rest {
            attribute(&mut out, name, value);
        }
        if self.raw_data.is_some() {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(data.as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Appends `value` as a JSON string. Most attributes (ids, times, trace contexts, names)
/// hold nothing to escape: those are copied as they are after one scan, the others are
/// written by serde_json.
fn json_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // Without an early exit, so that the compiler can scan many bytes at once.
    let plain = !bytes.iter().fold(false, |escape, &b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        // Writing a string into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// Appends `,"name":value` to an object being written.
fn attribute<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, value: &T) {
    out.push(b',');
    // Writing strings and JSON values into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Takes attribute `name` out of `event`: a string, or an error when it is something else.
fn take_string(
    event: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, CloudEventError> {
    match event.remove(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(CloudEventError::NotAString(name)),
    }
}

/// Takes attribute `name` out of `event` when it is a string (anything else is replaced).
fn take_lenient(event: &mut Map<String, Value>, name: &str) -> Option<String> {
    match event.remove(name) {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// Builds the CloudEvent of a publish: `body` is parsed as a CloudEvent when the request
/// says `application/cloudevents+json` (missing attributes are filled), otherwise it is
/// the event's data and is wrapped as Dapr wraps it. JSON data is kept as published.
pub fn build_parts<'a>(
    body: Body<'a>,
    meta: &'a PublishMeta<'a>,
) -> Result<Built<'a>, CloudEventError> {
    let mut raw_data = None;
    let mut given_content_type = None;
    let mut rest = if meta.content_type == CLOUDEVENTS_JSON {
        match serde_json::from_slice::<Value>(body.bytes()) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CloudEventError::NotAnObject("not a JSON object".into())),
            Err(err) => return Err(CloudEventError::NotAnObject(err.to_string())),
        }
    } else {
        let raw = body.json();
        let content_type = match (meta.content_type, raw) {
            ("", Some(_)) => "application/json",
            ("", None) => "text/plain",
            (given, _) => given,
        };
        match raw {
            Some(raw) if is_json(content_type) => {
                raw_data = Some(raw);
                given_content_type = Some(content_type);
                Map::new()
            }
            _ => wrap_data(body.bytes(), content_type),
        }
    };
    let id = take_string(&mut rest, "id")?;
    let source = take_string(&mut rest, "source")?;
    let event_type = take_string(&mut rest, "type")?;
    let specversion = take_string(&mut rest, "specversion")?;
    let datacontenttype = match take_string(&mut rest, "datacontenttype")? {
        Some(given) => Cow::Owned(given),
        None => Cow::Borrowed(given_content_type.unwrap_or("application/json")),
    };
    let o = &meta.overrides;
    let context = o
        .traceparent
        .clone()
        .or_else(|| meta.traceparent.clone())
        .unwrap_or_else(super::trace::new_traceparent);
    let traceparent = o
        .traceparent
        .clone()
        .or(take_lenient(&mut rest, "traceparent"))
        .unwrap_or_else(|| context.clone());
    let traceid = o
        .traceid
        .clone()
        .or(take_lenient(&mut rest, "traceid"))
        .unwrap_or(context);
    let tracestate = o
        .tracestate
        .clone()
        .or(take_lenient(&mut rest, "tracestate"))
        .or_else(|| meta.tracestate.map(str::to_string))
        .unwrap_or_default();
    let time = take_lenient(&mut rest, "time").unwrap_or_else(now_rfc3339);
    rest.remove("topic");
    rest.remove("pubsubname");
    let expiration = meta.expires_us.map(|expires| {
        rest.remove("expiration");
        let at = UNIX_EPOCH + std::time::Duration::from_micros(expires);
        humantime::format_rfc3339_millis(at).to_string()
    });
    let event = Built {
        id: (o.id.clone().or(id)).unwrap_or_else(super::new_event_id),
        source: (o.source.clone().or(source)).unwrap_or_else(|| meta.source.to_string()),
        event_type: (o.event_type.clone().or(event_type))
            .unwrap_or_else(|| DEFAULT_TYPE.to_string()),
        datacontenttype,
        time,
        traceparent,
        traceid,
        tracestate,
        topic: meta.topic,
        pubsubname: meta.pubsubname,
        expiration,
        rest,
        raw_data,
    };
    check_identity(&event)?;
    match specversion.as_deref() {
        Some("1.0") | None => Ok(event),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(content_type: &str) -> PublishMeta<'_> {
        PublishMeta {
            content_type,
            pubsubname: "pubsub",
            topic: "orders",
            source: "checkout",
            ..PublishMeta::default()
        }
    }

    /// The CloudEvent as written, read back as a tree.
    fn build(body: &[u8], meta: &PublishMeta) -> Result<Map<String, Value>, CloudEventError> {
        let text = build_parts(Body::Bytes(body), meta)?.to_vec();
        match serde_json::from_slice(&text) {
            Ok(Value::Object(event)) => Ok(event),
            other => panic!("not a JSON object: {other:?}"),
        }
    }

    #[test]
    fn attributes_are_written_as_serde_json_writes_strings() {
        for value in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "say \"hi\"",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "\u{7f} and ünïcödé ✓",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, value);
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                serde_json::to_string(value).expect("json"),
                "{value:?}"
            );
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
        let json = meta("application/json");
        let built = build_parts(Body::Bytes(body), &json).expect("ce");
        let text = built.to_vec();
        let written = std::str::from_utf8(&text).expect("utf-8");
        assert!(
            written.ends_with(r#","data":{"b": [1, 2.50, "x"], "a": {}}}"#),
            "{written}"
        );
        let parsed: Value = serde_json::from_slice(&text).expect("valid JSON");
        assert_eq!(parsed["data"]["b"][1], 2.5);
        assert_eq!(parsed["id"], built.id.as_str());
    }

    #[test]
    fn hostile_attributes_are_written_as_json_strings() {
        let mut m = meta("application/json");
        m.topic = "or\"ders\u{1}</script>";
        m.overrides.to_mut().tracestate = Some("a=\"b\"\n".into());
        let body = br#"{"specversion":"1.0","id":"e\"1","source":"s","type":"t","x-ext":{"k":[1]},"data":5}"#;
        let mut structured = meta(CLOUDEVENTS_JSON);
        structured.topic = m.topic;
        for (body, meta) in [(&b"{}"[..], &m), (&body[..], &structured)] {
            let event = build(body, meta).expect("ce");
            assert_eq!(event["topic"], "or\"ders\u{1}</script>");
            assert_eq!(
                event.len(),
                event.keys().collect::<std::collections::HashSet<_>>().len()
            );
        }
        let event = build(body, &structured).expect("ce");
        assert_eq!(event["id"], "e\"1");
        assert_eq!(event["x-ext"]["k"][0], 1);
        assert_eq!(event["data"], 5);
        assert_eq!(build(b"{}", &m).expect("ce")["tracestate"], "a=\"b\"\n");
    }

    #[test]
    fn a_time_to_live_sets_the_expiration() {
        let mut m = meta(CLOUDEVENTS_JSON);
        let body = br#"{"id":"e","source":"s","type":"t","expiration":"old","time":5}"#;
        let event = build(body, &m).expect("ce");
        assert_eq!(event["expiration"], "old");
        assert!(event["time"].is_string());
        m.expires_us = Some(1_000_000);
        let event = build(body, &m).expect("ce");
        assert_eq!(event["expiration"], "1970-01-01T00:00:01.000Z");
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
        m.overrides.to_mut().id = Some("fixed".into());
        m.overrides.to_mut().event_type = Some("order.created".into());
        m.overrides.to_mut().traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let event = build(b"{}", &m).expect("ce");
        assert_eq!(event["id"], "fixed");
        assert_eq!(event["type"], "order.created");
        assert_eq!(
            event["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}
