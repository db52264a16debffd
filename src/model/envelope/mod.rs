//! The binary envelope stored in each stream entry (rkyv): the event as sent plus what
//! routing needs, read in place by delivery without decoding it into owned strings.

mod stored;

use rkyv::rancor;

pub use self::stored::{aligned_copy, Stored, StoredFields};

/// Version byte in front of every stored envelope, so readers can tell formats apart.
pub const ENVELOPE_VERSION: u8 = 2;

/// Name of the one field of every stream entry (and of every DLQ entry's event).
pub const ENTRY_FIELD: &str = "e";

/// What every stream entry holds: the event as sent plus what routing needs, so that
/// readers never parse JSON to dispatch.
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
        let mut out = Vec::with_capacity(estimate + 1);
        out.push(ENVELOPE_VERSION);
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, AfterVersion(out))
            .map(|entry| entry.0)
            .unwrap_or_default()
    }

    /// Reads an entry for delivery: it is validated where it lies when its archive is
    /// aligned (an [`aligned_copy`]), else in an aligned copy; the short fields are copied
    /// out, and the payload is located in `bytes` so that a slice of them can be handed on
    /// instead of a copy.
    pub fn view(bytes: &[u8]) -> Result<EntryView, EnvelopeError> {
        let stored = Stored::open(bytes)?;
        let (version, aligned) = (stored.version, &stored.archive[..]);
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
            let v1 = rkyv::access::<ArchivedEnvelopeV1, rancor::Error>(aligned).map_err(corrupt)?;
            return view_of!(v1, None, PayloadFormat::Event);
        }
        let v2 = rkyv::access::<ArchivedEnvelope, rancor::Error>(aligned).map_err(corrupt)?;
        let format = match v2.format {
            ArchivedPayloadFormat::Event => PayloadFormat::Event,
            ArchivedPayloadFormat::CloudEvent => PayloadFormat::CloudEvent,
            ArchivedPayloadFormat::Raw => PayloadFormat::Raw,
        };
        view_of!(v2, v2.expires_us.as_ref().map(|s| s.to_native()), format)
    }

    /// Decodes what [`Envelope::encode`] wrote (in place when its archive lies aligned,
    /// else from an aligned copy).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let stored = Stored::open(bytes)?;
        let (version, aligned) = (stored.version, &stored.archive[..]);
        let corrupt = |e: rancor::Error| EnvelopeError::Corrupt(e.to_string());
        if version == 1 {
            return rkyv::from_bytes::<EnvelopeV1, rancor::Error>(aligned)
                .map(Envelope::from)
                .map_err(corrupt);
        }
        rkyv::from_bytes::<Envelope, rancor::Error>(aligned).map_err(corrupt)
    }
}

/// An entry being written: the version byte, then the archive written straight after it.
/// Positions count from the byte after the version, so the archive is laid out exactly as
/// one written on its own (and is read from an aligned place: [`aligned_copy`]).
struct AfterVersion(Vec<u8>);

impl rkyv::ser::Positional for AfterVersion {
    fn pos(&self) -> usize {
        self.0.len() - 1
    }
}

impl<E> rkyv::ser::Writer<E> for AfterVersion {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = crate::model::event::tests::EVENT;

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
        // The archive after the version byte is the one rkyv writes on its own.
        let alone = rkyv::to_bytes::<rancor::Error>(&envelope).expect("archive");
        assert_eq!(&bytes[1..], &alone[..]);
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
        let stored = Stored::open(&bytes).expect("open v1");
        let fields = stored.fields().expect("fields v1");
        assert_eq!(
            (
                fields.event_id,
                fields.service,
                fields.format,
                fields.payload
            ),
            (
                "evt_1",
                "order-service",
                PayloadFormat::Event,
                EVENT.as_bytes()
            )
        );
    }
}
