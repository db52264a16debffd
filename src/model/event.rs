//! The event as a client sends it: reading what routing needs from the JSON without
//! building a tree of `data`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;

use super::text::Text;

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
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if &*key == self.key {
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
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let slot = match &*key {
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
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let slot = match &*key {
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

/// Whether a JSON text nests arrays and objects deeper than `limit`. A text cannot nest
/// deeper than it has brackets: they are counted first (a vectorised search that stops
/// past the limit), and only a text with more brackets than the limit is walked.
pub fn deeper_than(bytes: &[u8], limit: usize) -> bool {
    memchr::memchr2_iter(b'{', b'[', bytes).nth(limit).is_some() && json_depth(bytes, limit) > limit
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const EVENT: &str = r#"{"event_id":"evt_order_1","event_type":"order.created","timestamp":"2026-01-30T10:00:00Z","version":"1.0","data":{"order_id":"ord_9","items":[{"sku":"a"},{"sku":"b"}],"we\"ird":1},"metadata":{"correlation_id":"c1","service":"order-service","version":"1.2.3","sequence":3},"extra":true}"#;

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
    fn deeper_than_walks_only_what_has_more_brackets_than_the_limit() {
        // Brackets inside strings are counted, then found not to nest.
        let shallow = format!(r#"{{"a":"{}","b":[1]}}"#, "[{".repeat(50));
        assert!(!deeper_than(shallow.as_bytes(), 3));
        let at_limit = "[".repeat(3) + &"]".repeat(3);
        assert!(!deeper_than(at_limit.as_bytes(), 3));
        let past = "[".repeat(4) + &"]".repeat(4);
        assert!(deeper_than(past.as_bytes(), 3));
        // Fewer brackets than the limit cannot nest past it.
        assert!(!deeper_than(br#"{"a":{"b":1}}"#, 2));
        assert!(deeper_than(br#"{"a":{"b":1}}"#, 1));
    }
}
