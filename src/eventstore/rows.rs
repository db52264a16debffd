//! One stored event as a row of the event table: the envelope's fields, where it was
//! stored (stream, partition, id, and the time in the id), the few fields read from its
//! payload (time, causation id), and the payload as `json` (or bytes when it is not JSON);
//! and a row read back as the envelope it was stored as (for replays and restores).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::sealing::{unseal, KeyRing, Plain};
use super::skim::{self, TimeField, TopTime};
use crate::model::envelope::{Envelope, PayloadFormat, StoredFields};
use crate::model::text::Text;

/// The columns written, in the table's order.
pub const COLUMNS: &[(&str, Type)] = &[
    ("stored_at", Type::TIMESTAMPTZ),
    ("stream", Type::TEXT),
    ("partition", Type::INT4),
    ("redis_id", Type::TEXT),
    ("redis_seq", Type::INT8),
    ("event_id", Type::TEXT),
    ("event_type", Type::TEXT),
    ("topic", Type::TEXT),
    ("entity_key", Type::TEXT),
    ("correlation_id", Type::TEXT),
    ("causation_id", Type::TEXT),
    ("service", Type::TEXT),
    ("sequence", Type::INT8),
    ("event_time", Type::TIMESTAMPTZ),
    ("received_at", Type::TIMESTAMPTZ),
    ("format", Type::TEXT),
    ("content_type", Type::TEXT),
    ("payload", Type::JSON),
    ("payload_bytes", Type::BYTEA),
    ("trace_id", Type::TEXT),
    ("subjects", Type::TEXT_ARRAY),
    ("sealed", Type::BYTEA),
];

/// JSON text written as `json`, byte for byte.
#[derive(Debug)]
pub struct RawJson<'a>(pub &'a [u8]);

impl ToSql for RawJson<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // json's binary format is its text.
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }

    to_sql_checked!();
}

/// One row, borrowing from the stored entry it is made of.
#[derive(Debug)]
pub struct Row<'a> {
    pub stored_at: SystemTime,
    pub stream: &'a str,
    pub partition: i32,
    pub redis_id: &'a str,
    /// The sequence part of the id: with `stored_at`, its place in stored order.
    pub redis_seq: i64,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub topic: &'a str,
    pub entity_key: &'a str,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<String>,
    pub service: Option<&'a str>,
    pub sequence: Option<i64>,
    pub event_time: Option<SystemTime>,
    pub received_at: SystemTime,
    pub format: &'static str,
    pub content_type: Option<&'a str>,
    pub payload: Option<RawJson<'a>>,
    pub payload_bytes: Option<&'a [u8]>,
    pub trace_id: Option<&'a str>,
    /// The data subjects it is about.
    pub subjects: Vec<String>,
    /// The payload sealed under its subjects' keys (then `payload` and `payload_bytes`
    /// are empty).
    pub sealed: Option<Vec<u8>>,
}

impl<'a> Row<'a> {
    /// The values, in [`COLUMNS`] order.
    pub fn values(&self) -> [&(dyn ToSql + Sync); 22] {
        [
            &self.stored_at,
            &self.stream,
            &self.partition,
            &self.redis_id,
            &self.redis_seq,
            &self.event_id,
            &self.event_type,
            &self.topic,
            &self.entity_key,
            &self.correlation_id,
            &self.causation_id,
            &self.service,
            &self.sequence,
            &self.event_time,
            &self.received_at,
            &self.format,
            &self.content_type,
            &self.payload,
            &self.payload_bytes,
            &self.trace_id,
            &self.subjects,
            &self.sealed,
        ]
    }

    /// The row of `envelope`, stored as entry `redis_id` of `partition_key`
    /// (`{prefix}:{stream.N}`).
    pub fn new(
        envelope: StoredFields<'a>,
        partition_key: &'a str,
        redis_id: &'a str,
        subjects: &super::subjects::Subjects,
    ) -> Self {
        let about = subjects.of(envelope.topic, envelope.payload);
        let (stream, partition) = stream_and_partition(partition_key);
        let stored_ms = redis_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(envelope.received_us / 1000);
        let read = Fields::read(envelope.payload, envelope.format);
        let json = match envelope.format {
            PayloadFormat::Event | PayloadFormat::CloudEvent => true,
            PayloadFormat::Raw => {
                serde_json::from_slice::<serde::de::IgnoredAny>(envelope.payload).is_ok()
            }
        };
        let some = |s: &'a str| (!s.is_empty()).then_some(s);
        let (payload, payload_bytes) = if json {
            (Some(RawJson(envelope.payload)), None)
        } else {
            (None, Some(envelope.payload))
        };
        let trace_id = crate::model::trace::trace_id_of(envelope.traceparent);
        Self {
            stored_at: UNIX_EPOCH + Duration::from_millis(stored_ms),
            stream,
            partition,
            redis_id,
            redis_seq: redis_id
                .split_once('-')
                .and_then(|(_, seq)| seq.parse::<u64>().ok())
                .unwrap_or(0)
                .min(i64::MAX as u64) as i64,
            event_type: envelope.event_type,
            topic: envelope.topic,
            entity_key: envelope.key,
            correlation_id: some(envelope.correlation_id),
            causation_id: read.causation_id,
            service: some(envelope.service),
            sequence: envelope.sequence.map(|s| s.min(i64::MAX as u64) as i64),
            event_time: read.time,
            received_at: UNIX_EPOCH + Duration::from_micros(envelope.received_us),
            format: match envelope.format {
                PayloadFormat::Event => "event",
                PayloadFormat::CloudEvent => "cloudevent",
                PayloadFormat::Raw => "raw",
            },
            content_type: envelope.content_type,
            payload_bytes,
            payload,
            trace_id,
            subjects: about,
            sealed: None,
            event_id: envelope.event_id,
        }
    }
}

/// `evr:{order.3}` → (`order`, 3).
pub(super) fn stream_and_partition(key: &str) -> (&str, i32) {
    let inner = key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(key, |(inner, _)| inner);
    match inner.rsplit_once('.') {
        Some((stream, n)) => (stream, n.parse().unwrap_or(0)),
        None => (inner, 0),
    }
}

/// What the table keeps of the payload beside it: the event's own time and its cause.
struct Fields {
    time: Option<SystemTime>,
    causation_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    time: Option<Text<'a>>,
    #[serde(borrow)]
    metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    causation_id: Option<Text<'a>>,
}

impl Fields {
    fn read(payload: &[u8], format: PayloadFormat) -> Self {
        let field = match format {
            PayloadFormat::CloudEvent => TimeField::Time,
            PayloadFormat::Event | PayloadFormat::Raw => TimeField::Timestamp,
        };
        // No cause anywhere in it: its time is all there is to read, from the top level,
        // and only up to it.
        if memchr::memmem::find(payload, b"\"causation_id\"").is_none() {
            match skim::top_time(payload, field) {
                TopTime::Found(t) => {
                    return Self {
                        time: humantime::parse_rfc3339_weak(t).ok(),
                        causation_id: None,
                    }
                }
                TopTime::Absent => {
                    return Self {
                        time: None,
                        causation_id: None,
                    }
                }
                TopTime::Unsure => {}
            }
        }
        let Ok(top) = serde_json::from_slice::<Top>(payload) else {
            return Self {
                time: None,
                causation_id: None,
            };
        };
        // A CloudEvent carries the platform event in `data`, read again only for a cause
        // the CloudEvent does not name itself and whose key appears somewhere in it.
        let inner = match (format, top.data) {
            (PayloadFormat::CloudEvent, Some(data))
                if top
                    .metadata
                    .as_ref()
                    .is_none_or(|m| m.causation_id.is_none())
                    && memchr::memmem::find(data.get().as_bytes(), b"\"causation_id\"")
                        .is_some() =>
            {
                serde_json::from_str::<Top>(data.get()).ok()
            }
            _ => None,
        };
        let time = match field {
            TimeField::Time => top.time.as_deref(),
            TimeField::Timestamp => top.timestamp.as_deref().or(top.time.as_deref()),
        }
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let causation = |t: &Top| {
            t.metadata
                .as_ref()
                .and_then(|m| m.causation_id.as_deref())
                .map(str::to_string)
        };
        Self {
            time,
            causation_id: causation(&top).or_else(|| inner.as_ref().and_then(causation)),
        }
    }
}

/// The columns [`row_envelope`] reads.
pub(super) const ARCHIVED_COLUMNS: &str = "stored_at, stream, partition, redis_id, event_id, \
    event_type, topic, entity_key, correlation_id, service, sequence, received_at, format, \
    content_type, payload::text, payload_bytes, trace_id, redis_seq, sealed, subjects";

/// Microseconds since the epoch.
fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
        .min(i64::MAX as u128) as i64
}

/// An archived event: where it was stored (µs, stream, partition, id, id's sequence part)
/// and its envelope.
pub(super) type Archived = (i64, String, i32, String, i64, Envelope);

/// An archived row as the envelope it was stored as (its trace continued with a new span).
pub(super) fn row_envelope(row: &tokio_postgres::Row, ring: &KeyRing) -> Archived {
    let stored_at: SystemTime = row.get(0);
    let format = match row.get::<_, &str>(12) {
        "cloudevent" => PayloadFormat::CloudEvent,
        "raw" => PayloadFormat::Raw,
        _ => PayloadFormat::Event,
    };
    let event_id: String = row.get(4);
    let event_type: String = row.get(5);
    let subjects: Vec<String> = row.get(19);
    let payload = match unseal(ring, row.get(18), &subjects, &event_id, &event_type) {
        Some(Plain::Json(bytes) | Plain::Bytes(bytes)) => bytes,
        None => match (
            row.get::<_, Option<String>>(14),
            row.get::<_, Option<Vec<u8>>>(15),
        ) {
            (Some(json), _) => json.into_bytes(),
            (None, Some(bytes)) => bytes,
            (None, None) => Vec::new(),
        },
    };
    let traceparent = row
        .get::<_, Option<String>>(16)
        .map(|trace| format!("00-{trace}-{:016x}-01", fastrand::u64(1..)))
        .filter(|t| crate::model::trace::is_valid_traceparent(t))
        .unwrap_or_else(crate::model::trace::new_traceparent);
    let received_at: SystemTime = row.get(11);
    let envelope = Envelope {
        event_id,
        event_type,
        topic: row.get(6),
        key: row.get(7),
        correlation_id: row.get::<_, Option<String>>(8).unwrap_or_default(),
        service: row.get::<_, Option<String>>(9).unwrap_or_default(),
        sequence: row.get::<_, Option<i64>>(10).map(|s| s.max(0) as u64),
        received_us: micros(received_at).max(0) as u64,
        traceparent,
        tracestate: None,
        payload,
        format,
        content_type: row.get(13),
        expires_us: None,
    };
    (
        micros(stored_at),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(17),
        envelope,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_key_names_its_stream_and_number() {
        assert_eq!(stream_and_partition("evr:{order.3}"), ("order", 3));
        assert_eq!(stream_and_partition("x:{a.b.12}"), ("a.b", 12));
    }

    #[test]
    fn the_cause_and_time_are_read_from_an_event_and_from_a_cloudevents_data() {
        let event = br#"{"metadata":{"causation_id":"c1"},"timestamp":"2026-12-07T10:00:00Z"}"#;
        let read = Fields::read(event, PayloadFormat::Event);
        assert_eq!(read.causation_id.as_deref(), Some("c1"));
        assert!(read.time.is_some());
        let cloud = br#"{"id":"1","time":"2026-12-07T10:00:00Z","data":{"metadata":{"causation_id":"c2"},"causation_id":"x"}}"#;
        let read = Fields::read(cloud, PayloadFormat::CloudEvent);
        assert_eq!(read.causation_id.as_deref(), Some("c2"), "from the data");
        assert!(read.time.is_some());
        // No cause in the data: the data is not read again, and there is none.
        let none = br#"{"id":"1","time":"2026-12-07T10:00:00Z","data":{"metadata":{"user":"u"}}}"#;
        assert_eq!(
            Fields::read(none, PayloadFormat::CloudEvent).causation_id,
            None
        );
        // The CloudEvent's own cause wins over its data's.
        let own =
            br#"{"metadata":{"causation_id":"c3"},"data":{"metadata":{"causation_id":"c4"}}}"#;
        let read = Fields::read(own, PayloadFormat::CloudEvent);
        assert_eq!(read.causation_id.as_deref(), Some("c3"));
        // The key as a value, not a key, names no cause.
        let value = br#"{"data":{"note":""causation_id"","metadata":{}}}"#;
        assert_eq!(
            Fields::read(value, PayloadFormat::CloudEvent).causation_id,
            None
        );
    }
}
