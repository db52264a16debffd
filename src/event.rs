//! The event model: reading what routing needs from a client's JSON without building a
//! tree of `data`, and the binary envelope stored in each stream entry.

use std::borrow::Cow;
use std::fmt;

use rkyv::rancor;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;

/// Version byte in front of every stored envelope, so readers can tell formats apart.
pub const ENVELOPE_VERSION: u8 = 2;

/// Name of the one field of every stream entry.
pub const ENTRY_FIELD: &str = "e";

/// The top-level fields of an event, each as the raw JSON the client sent.
#[derive(Debug, Default)]
pub struct RawEvent<'a> {
    /// The whole event, exactly as sent.
    pub raw: &'a str,
    /// `event_id`.
    pub event_id: Option<&'a RawValue>,
    /// `event_type`.
    pub event_type: Option<&'a RawValue>,
    /// `timestamp`.
    pub timestamp: Option<&'a RawValue>,
    /// `version`.
    pub version: Option<&'a RawValue>,
    /// `data`, never parsed into a tree on the hot path.
    pub data: Option<&'a RawValue>,
    /// `metadata`.
    pub metadata: Option<&'a RawValue>,
}

impl<'a> RawEvent<'a> {
    /// Reads the top level of one event. Fails when `raw` is not a JSON object.
    pub fn parse(raw: &'a RawValue) -> Result<Self, serde_json::Error> {
        let text = raw.get();
        let mut de = serde_json::Deserializer::from_str(text);
        let mut event = de.deserialize_map(TopVisitor)?;
        event.raw = text;
        Ok(event)
    }

    /// The top-level field named by the first segment of a JSON pointer.
    pub fn field(&self, name: &str) -> Option<&'a RawValue> {
        match name {
            "event_id" => self.event_id,
            "event_type" => self.event_type,
            "timestamp" => self.timestamp,
            "version" => self.version,
            "data" => self.data,
            "metadata" => self.metadata,
            _ => lookup_key(self.raw, name).ok().flatten(),
        }
    }

    /// Resolves a JSON pointer (`/data/order_id`) without building a tree.
    pub fn pointer(&self, pointer: &str) -> Option<&'a RawValue> {
        let mut segments = pointer.strip_prefix('/')?.split('/');
        let first = unescape_pointer(segments.next()?);
        let mut current = self.field(&first)?;
        for segment in segments {
            let segment = unescape_pointer(segment);
            current = lookup(current.get(), &segment)?;
        }
        Some(current)
    }
}

fn unescape_pointer(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

/// Looks `segment` up in a raw object (by key) or array (by index).
fn lookup<'a>(raw: &'a str, segment: &str) -> Option<&'a RawValue> {
    match raw.as_bytes().first() {
        Some(b'{') => lookup_key(raw, segment).ok().flatten(),
        Some(b'[') => {
            let index: usize = segment.parse().ok()?;
            let items: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
            items.get(index).copied()
        }
        _ => None,
    }
}

/// Finds one key of a raw JSON object, skipping every other value unparsed and stopping at
/// the key (the rest of the object is not read, so it is not checked either).
pub fn lookup_key<'a>(raw: &'a str, key: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let found = std::cell::Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(raw);
    match de.deserialize_map(KeyFinder { key, found: &found }) {
        Ok(()) => Ok(None),
        // Stopping at the key is signalled as an error, the only way a visitor can stop
        // early; the value is in `found`.
        Err(_) if found.get().is_some() => Ok(found.get()),
        Err(err) => Err(err),
    }
}

struct KeyFinder<'k, 'de> {
    key: &'k str,
    found: &'k std::cell::Cell<Option<&'de RawValue>>,
}

impl<'de> Visitor<'de> for KeyFinder<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == self.key {
                self.found.set(Some(map.next_value::<&'de RawValue>()?));
                return Err(serde::de::Error::custom("found"));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut event = RawEvent::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "event_id" => &mut event.event_id,
                "event_type" => &mut event.event_type,
                "timestamp" => &mut event.timestamp,
                "version" => &mut event.version,
                "data" => &mut event.data,
                "metadata" => &mut event.metadata,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(event)
    }
}

/// The `metadata` fields routing and enrichment use, each as raw JSON, read in one pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawMetadata<'a> {
    /// `metadata.correlation_id`.
    pub correlation_id: Option<&'a RawValue>,
    /// `metadata.service`.
    pub service: Option<&'a RawValue>,
    /// `metadata.partition_key`.
    pub partition_key: Option<&'a RawValue>,
    /// `metadata.sequence`.
    pub sequence: Option<&'a RawValue>,
    /// `metadata.version`.
    pub version: Option<&'a RawValue>,
    /// `metadata.traceparent`.
    pub traceparent: Option<&'a RawValue>,
}

impl<'a> RawMetadata<'a> {
    /// Reads the fields of a raw `metadata` object; empty when it is not an object.
    pub fn parse(raw: Option<&'a RawValue>) -> Self {
        let Some(raw) = raw else {
            return Self::default();
        };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de.deserialize_map(MetadataVisitor).unwrap_or_default()
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = RawMetadata<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a metadata object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut meta = RawMetadata::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "correlation_id" => &mut meta.correlation_id,
                "service" => &mut meta.service,
                "partition_key" => &mut meta.partition_key,
                "sequence" => &mut meta.sequence,
                "version" => &mut meta.version,
                "traceparent" => &mut meta.traceparent,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(meta)
    }
}

/// Reads a raw JSON string value without allocating when it has no escapes.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    let inner = &text[1..text.len().saturating_sub(1)];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// Reads a raw JSON value as an unsigned integer.
pub fn raw_u64(raw: &RawValue) -> Option<u64> {
    raw.get().parse().ok()
}

/// Parses a JSON body as either one event or an array of events, keeping each raw.
pub enum Body<'a> {
    /// One event object.
    One(&'a RawValue),
    /// An array of events.
    Many(Vec<&'a RawValue>),
}

impl<'a> Body<'a> {
    /// Splits a body into its events; fails with serde_json's message and position.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            serde_json::from_str::<Vec<&RawValue>>(text).map(Body::Many)
        } else {
            serde_json::from_str::<&RawValue>(text).map(Body::One)
        }
    }
}

/// The deepest nesting of arrays and objects in a JSON text (strings are skipped).
/// Returns early with `limit + 1` once the limit is passed.
pub fn json_depth(bytes: &[u8], limit: usize) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        match b {
            b'"' => {
                // Jump over the string: to its closing quote, past any escape.
                at += 1;
                loop {
                    let Some(rest) = bytes.get(at..) else {
                        return max;
                    };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(off) if rest[off] == b'\\' => at += off + 2,
                        Some(off) => {
                            at += off;
                            break;
                        }
                        None => return max,
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return max;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    max
}

/// What every stream entry holds: the event as sent plus what routing needs, so that
/// readers never parse JSON to route.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Envelope {
    /// `event_id`.
    pub event_id: String,
    /// The topic it was published to.
    pub topic: String,
    /// `event_type`.
    pub event_type: String,
    /// The entity key it is ordered by.
    pub key: String,
    /// `metadata.sequence`, when given.
    pub sequence: Option<u64>,
    /// When evrouter received it, in microseconds since the Unix epoch.
    pub received_us: u64,
    /// The publishing service (`metadata.service`).
    pub service: String,
    /// `metadata.correlation_id`.
    pub correlation_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// W3C `tracestate`, when given.
    pub tracestate: Option<String>,
    /// The event's JSON, exactly as the client sent it (or a CloudEvent, or raw bytes:
    /// see `format`).
    pub payload: Vec<u8>,
    /// What `payload` holds.
    pub format: PayloadFormat,
    /// The content type of a raw payload.
    pub content_type: Option<String>,
    /// When the event expires and is no longer delivered (µs since the Unix epoch).
    pub expires_us: Option<u64>,
}

/// What an envelope's payload holds, so that delivery can present it as each subscriber
/// expects (a platform event, a CloudEvent, or bytes as published).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum PayloadFormat {
    /// An event of the platform's schema, published to `/v1/publish`.
    #[default]
    Event,
    /// A CloudEvent (JSON, structured mode), published through the Dapr API.
    CloudEvent,
    /// Bytes published with Dapr's `rawPayload`, kept as they came.
    Raw,
}

/// The envelope as version 1 wrote it (before formats and expiry), still read.
#[derive(rkyv::Archive, rkyv::Deserialize, rkyv::Serialize)]
struct EnvelopeV1 {
    event_id: String,
    topic: String,
    event_type: String,
    key: String,
    sequence: Option<u64>,
    received_us: u64,
    service: String,
    correlation_id: String,
    traceparent: String,
    tracestate: Option<String>,
    payload: Vec<u8>,
}

impl From<EnvelopeV1> for Envelope {
    fn from(v1: EnvelopeV1) -> Self {
        Envelope {
            event_id: v1.event_id,
            topic: v1.topic,
            event_type: v1.event_type,
            key: v1.key,
            sequence: v1.sequence,
            received_us: v1.received_us,
            service: v1.service,
            correlation_id: v1.correlation_id,
            traceparent: v1.traceparent,
            tracestate: v1.tracestate,
            payload: v1.payload,
            format: PayloadFormat::Event,
            content_type: None,
            expires_us: None,
        }
    }
}

/// What delivery reads of a stored entry, without copying the payload out of it: the
/// short fields routing and sending need, and where the payload lies in the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    /// `event_id`.
    pub event_id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The entity key it is ordered by.
    pub key: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// When evrouter received it (µs since the epoch).
    pub received_us: u64,
    /// `metadata.sequence`, when given.
    pub sequence: Option<u64>,
    /// When it expires (µs since the epoch).
    pub expires_us: Option<u64>,
    /// What the payload holds.
    pub format: PayloadFormat,
    /// Where the payload lies in the entry's bytes (version byte included).
    pub payload: std::ops::Range<usize>,
}

/// Why an entry could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The entry is empty.
    #[error("empty entry")]
    Empty,
    /// The version byte is not one this build reads.
    #[error("unknown envelope version {0}")]
    Version(u8),
    /// The bytes are not a valid archive.
    #[error("corrupt envelope: {0}")]
    Corrupt(String),
}

impl Envelope {
    /// Encodes as the version byte followed by the rkyv archive.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and bytes into memory cannot fail.
        // Sized up front: growing the buffer while serializing copied the payload again.
        let estimate = 128
            + self.payload.len()
            + self.event_id.len()
            + self.topic.len()
            + self.event_type.len()
            + self.key.len()
            + self.service.len()
            + self.correlation_id.len()
            + self.traceparent.len()
            + self.tracestate.as_ref().map_or(0, String::len)
            + self.content_type.as_ref().map_or(0, String::len);
        let archived = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
            self,
            rkyv::util::AlignedVec::<16>::with_capacity(estimate),
        )
        .unwrap_or_default();
        let mut out = Vec::with_capacity(archived.len() + 1);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&archived);
        out
    }

    /// Reads an entry for delivery: it is copied once into aligned memory and validated,
    /// the short fields are copied out, and the payload is located in `bytes` so that a
    /// slice of them can be handed on instead of a copy.
    pub fn view(bytes: &[u8]) -> Result<EntryView, EnvelopeError> {
        let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION && version != 1 {
            return Err(EnvelopeError::Version(version));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        let corrupt = |e: rancor::Error| EnvelopeError::Corrupt(e.to_string());
        // The payload's place in `bytes`: its offset in the aligned copy, plus the version
        // byte.
        let locate = |payload: &[u8]| {
            let start = (payload.as_ptr() as usize).checked_sub(aligned.as_ptr() as usize)? + 1;
            let end = start.checked_add(payload.len())?;
            (end <= bytes.len()).then_some(start..end)
        };
        let outside = || EnvelopeError::Corrupt("payload outside the entry".into());
        // The same fields of either version's archive; version 1 has no expiry or format.
        macro_rules! view_of {
            ($archived:expr, $expires_us:expr, $format:expr) => {{
                let archived = $archived;
                Ok(EntryView {
                    event_id: archived.event_id.as_str().to_string(),
                    topic: archived.topic.as_str().to_string(),
                    key: archived.key.as_str().to_string(),
                    traceparent: archived.traceparent.as_str().to_string(),
                    received_us: archived.received_us.to_native(),
                    sequence: archived.sequence.as_ref().map(|s| s.to_native()),
                    expires_us: $expires_us,
                    format: $format,
                    payload: locate(archived.payload.as_slice()).ok_or_else(outside)?,
                })
            }};
        }
        if version == 1 {
            let v1 =
                rkyv::access::<ArchivedEnvelopeV1, rancor::Error>(&aligned).map_err(corrupt)?;
            return view_of!(v1, None, PayloadFormat::Event);
        }
        let v2 = rkyv::access::<ArchivedEnvelope, rancor::Error>(&aligned).map_err(corrupt)?;
        let format = match v2.format {
            ArchivedPayloadFormat::Event => PayloadFormat::Event,
            ArchivedPayloadFormat::CloudEvent => PayloadFormat::CloudEvent,
            ArchivedPayloadFormat::Raw => PayloadFormat::Raw,
        };
        view_of!(v2, v2.expires_us.as_ref().map(|s| s.to_native()), format)
    }

    /// Decodes what [`Envelope::encode`] wrote (copying into aligned memory first).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION && version != 1 {
            return Err(EnvelopeError::Version(version));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        let corrupt = |e: rancor::Error| EnvelopeError::Corrupt(e.to_string());
        if version == 1 {
            return rkyv::from_bytes::<EnvelopeV1, rancor::Error>(&aligned)
                .map(Envelope::from)
                .map_err(corrupt);
        }
        rkyv::from_bytes::<Envelope, rancor::Error>(&aligned).map_err(corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"event_id":"evt_order_1","event_type":"order.created","timestamp":"2026-01-30T10:00:00Z","version":"1.0","data":{"order_id":"ord_9","items":[{"sku":"a"},{"sku":"b"}],"we\"ird":1},"metadata":{"correlation_id":"c1","service":"order-service","version":"1.2.3","sequence":3},"extra":true}"#;

    #[test]
    fn reads_top_fields_and_pointers_without_a_tree() {
        let raw: &RawValue = serde_json::from_str(EVENT).expect("json");
        let event = RawEvent::parse(raw).expect("object");
        assert_eq!(
            raw_str(event.event_id.expect("id")).as_deref(),
            Some("evt_order_1")
        );
        let order = event.pointer("/data/order_id").expect("order id");
        assert_eq!(raw_str(order).as_deref(), Some("ord_9"));
        let sku = event.pointer("/data/items/1/sku").expect("sku");
        assert_eq!(raw_str(sku).as_deref(), Some("b"));
        assert_eq!(
            event.pointer("/metadata/sequence").and_then(raw_u64),
            Some(3)
        );
        assert!(event.pointer("/data/missing").is_none());
        assert!(event.pointer("/extra").is_some());
        assert_eq!(event.raw, EVENT);
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[["}]}"#, 64), 3);
        assert_eq!(json_depth(br#"{"a":"\\\"[[","b":["\\\\"]}"#, 64), 2);
        assert_eq!(json_depth(br#"["unterminated \\"#, 64), 1);
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(json_depth(deep.as_bytes(), 64), 65);
    }

    #[test]
    fn envelope_round_trips_and_checks_version() {
        let envelope = Envelope {
            event_id: "evt_order_1".into(),
            topic: "order.created".into(),
            event_type: "order.created".into(),
            key: "ord_9".into(),
            sequence: Some(3),
            received_us: 1_700_000_000_000_000,
            service: "order-service".into(),
            correlation_id: "c1".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: None,
            payload: EVENT.as_bytes().to_vec(),
            format: PayloadFormat::Event,
            content_type: None,
            expires_us: None,
        };
        let bytes = envelope.encode();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        assert_eq!(Envelope::decode(&bytes).expect("decode"), envelope);
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert!(matches!(
            Envelope::decode(&wrong),
            Err(EnvelopeError::Version(9))
        ));
        assert!(Envelope::decode(&bytes[..bytes.len() / 2]).is_err());
        let raw = Envelope {
            format: PayloadFormat::Raw,
            content_type: Some("application/octet-stream".into()),
            expires_us: Some(1_700_000_060_000_000),
            payload: vec![0, 159, 146, 150],
            ..envelope.clone()
        };
        assert_eq!(Envelope::decode(&raw.encode()).expect("decode"), raw);
    }

    #[test]
    fn a_view_reads_the_fields_and_finds_the_payload_in_place() {
        let envelope = Envelope {
            event_id: "evt_order_1".into(),
            topic: "order.created".into(),
            event_type: "order.created".into(),
            key: "ord_9".into(),
            sequence: Some(3),
            received_us: 42,
            service: "order-service".into(),
            correlation_id: "c1".into(),
            traceparent: "tp".into(),
            tracestate: None,
            payload: EVENT.as_bytes().to_vec(),
            format: PayloadFormat::CloudEvent,
            content_type: None,
            expires_us: Some(99),
        };
        let bytes = envelope.encode();
        let view = Envelope::view(&bytes).expect("view");
        assert_eq!(&bytes[view.payload.clone()], EVENT.as_bytes());
        assert_eq!(view.event_id, "evt_order_1");
        assert_eq!(view.topic, "order.created");
        assert_eq!(view.key, "ord_9");
        assert_eq!(view.traceparent, "tp");
        assert_eq!(view.received_us, 42);
        assert_eq!(view.sequence, Some(3));
        assert_eq!(view.expires_us, Some(99));
        assert_eq!(view.format, PayloadFormat::CloudEvent);
        assert!(Envelope::view(&bytes[..bytes.len() / 2]).is_err());
        let mut newer = bytes.clone();
        newer[0] = ENVELOPE_VERSION + 1;
        assert!(matches!(
            Envelope::view(&newer),
            Err(EnvelopeError::Version(v)) if v == ENVELOPE_VERSION + 1
        ));
    }

    #[test]
    fn version_one_envelopes_are_still_read() {
        let v1 = EnvelopeV1 {
            event_id: "evt_1".into(),
            topic: "order.created".into(),
            event_type: "order.created".into(),
            key: "ord_1".into(),
            sequence: None,
            received_us: 5,
            service: "order-service".into(),
            correlation_id: String::new(),
            traceparent: "tp".into(),
            tracestate: None,
            payload: EVENT.as_bytes().to_vec(),
        };
        let archived = rkyv::to_bytes::<rancor::Error>(&v1).expect("archive");
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&archived);
        let decoded = Envelope::decode(&bytes).expect("decode v1");
        assert_eq!(decoded.event_id, "evt_1");
        assert_eq!(decoded.format, PayloadFormat::Event);
        assert_eq!(decoded.payload, EVENT.as_bytes());
        let view = Envelope::view(&bytes).expect("view v1");
        assert_eq!(&bytes[view.payload], EVENT.as_bytes());
        assert_eq!(view.key, "ord_1");
        assert_eq!(view.expires_us, None);
    }
}
