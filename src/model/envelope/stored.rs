//! A stored entry read where it lies: its fields borrowed for the event store's rows, and
//! entries laid out so that their archives are read in place instead of copied again.

use rkyv::rancor;

use super::{
    ArchivedEnvelope, ArchivedEnvelopeV1, ArchivedPayloadFormat, EnvelopeError, PayloadFormat,
    ENVELOPE_VERSION,
};

/// A stored entry's envelope, read where it lies (or from one aligned copy) for a reader
/// that borrows its fields instead of owning them: the event store's rows.
pub struct Stored<'a> {
    pub(super) archive: Archive<'a>,
    pub(super) version: u8,
}

/// The fields of a [`Stored`] envelope, borrowed from it.
#[derive(Debug)]
pub struct StoredFields<'a> {
    pub event_id: &'a str,
    pub topic: &'a str,
    pub event_type: &'a str,
    pub key: &'a str,
    pub sequence: Option<u64>,
    pub received_us: u64,
    pub service: &'a str,
    pub correlation_id: &'a str,
    pub traceparent: &'a str,
    pub payload: &'a [u8],
    pub format: PayloadFormat,
    pub content_type: Option<&'a str>,
}

impl<'a> Stored<'a> {
    /// An entry as [`Envelope::encode`](super::Envelope::encode) wrote it; a version this
    /// build does not read is refused.
    pub fn open(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION && version != 1 {
            return Err(EnvelopeError::Version(version));
        }
        Ok(Self {
            archive: Archive::of(body),
            version,
        })
    }

    /// Its fields, once the archive is checked.
    pub fn fields(&self) -> Result<StoredFields<'_>, EnvelopeError> {
        let aligned: &[u8] = &self.archive;
        let corrupt = |e: rancor::Error| EnvelopeError::Corrupt(e.to_string());
        // The same fields of either version's archive; version 1 has no format or
        // content type.
        macro_rules! fields_of {
            ($archived:expr, $format:expr, $content_type:expr) => {{
                let archived = $archived;
                StoredFields {
                    event_id: archived.event_id.as_str(),
                    topic: archived.topic.as_str(),
                    event_type: archived.event_type.as_str(),
                    key: archived.key.as_str(),
                    sequence: archived.sequence.as_ref().map(|s| s.to_native()),
                    received_us: archived.received_us.to_native(),
                    service: archived.service.as_str(),
                    correlation_id: archived.correlation_id.as_str(),
                    traceparent: archived.traceparent.as_str(),
                    payload: archived.payload.as_slice(),
                    format: $format,
                    content_type: $content_type,
                }
            }};
        }
        if self.version == 1 {
            let v1 = rkyv::access::<ArchivedEnvelopeV1, rancor::Error>(aligned).map_err(corrupt)?;
            return Ok(fields_of!(v1, PayloadFormat::Event, None));
        }
        let v2 = rkyv::access::<ArchivedEnvelope, rancor::Error>(aligned).map_err(corrupt)?;
        let format = match v2.format {
            ArchivedPayloadFormat::Event => PayloadFormat::Event,
            ArchivedPayloadFormat::CloudEvent => PayloadFormat::CloudEvent,
            ArchivedPayloadFormat::Raw => PayloadFormat::Raw,
        };
        let content_type = v2.content_type.as_ref().map(|c| c.as_str());
        Ok(fields_of!(v2, format, content_type))
    }
}

/// The alignment an entry's archive is read at.
const ARCHIVE_ALIGN: usize = 16;

/// An entry's archive, read where it lies when that is aligned (see [`aligned_copy`]),
/// else from an aligned copy.
pub(super) enum Archive<'a> {
    InPlace(&'a [u8]),
    Copied(rkyv::util::AlignedVec<ARCHIVE_ALIGN>),
}

impl<'a> Archive<'a> {
    pub(super) fn of(body: &'a [u8]) -> Self {
        if body.as_ptr().align_offset(ARCHIVE_ALIGN) == 0 {
            return Self::InPlace(body);
        }
        let mut copy = rkyv::util::AlignedVec::<ARCHIVE_ALIGN>::with_capacity(body.len());
        copy.extend_from_slice(body);
        Self::Copied(copy)
    }
}

impl std::ops::Deref for Archive<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::InPlace(body) => body,
            Self::Copied(copy) => copy,
        }
    }
}

/// A copy of an entry (version byte and archive) laid out so that its archive starts
/// aligned: [`Envelope::view`](super::Envelope::view) and
/// [`Envelope::decode`](super::Envelope::decode) then read it in place instead of copying
/// it again.
pub fn aligned_copy(entry: &[u8]) -> bytes::Bytes {
    use bytes::Buf;
    let mut buf = Vec::with_capacity(entry.len() + ARCHIVE_ALIGN - 1);
    // Padding so that the byte after the version byte lands on an aligned address; the
    // capacity leaves room for it, so the buffer never moves. With an allocator that
    // aligns blocks to 16 bytes (mimalloc does) the padding fills the capacity exactly,
    // and the buffer becomes a `Bytes` without another allocation.
    let pad = (buf.as_ptr() as usize).wrapping_add(1).wrapping_neg() % ARCHIVE_ALIGN;
    buf.resize(pad, 0);
    buf.extend_from_slice(entry);
    let mut copy = bytes::Bytes::from(buf);
    copy.advance(pad);
    copy
}

#[cfg(test)]
mod tests {
    use super::super::Envelope;
    use super::*;
    use crate::model::event::tests::EVENT;

    #[test]
    fn an_aligned_copy_is_read_in_place_and_a_copy_at_any_offset_reads_the_same() {
        let envelope = Envelope {
            event_id: "evt_order_2".into(),
            topic: "order.created".into(),
            event_type: "order.created".into(),
            key: "ord_2".into(),
            sequence: None,
            received_us: 7,
            service: "order-service".into(),
            correlation_id: "c2".into(),
            traceparent: "tp".into(),
            tracestate: Some("vendor=1".into()),
            payload: EVENT.as_bytes().to_vec(),
            format: PayloadFormat::Event,
            content_type: None,
            expires_us: None,
        };
        let bytes = envelope.encode();
        let copy = aligned_copy(&bytes);
        assert_eq!(&copy[..], &bytes[..]);
        assert!(
            matches!(Archive::of(&copy[1..]), Archive::InPlace(_)),
            "the archive lies aligned"
        );
        let view = Envelope::view(&copy).expect("view in place");
        assert_eq!(&copy[view.payload.clone()], EVENT.as_bytes());
        assert_eq!(Envelope::decode(&copy).expect("decode in place"), envelope);
        // Every other placement is read through an aligned copy, to the same result.
        for offset in 0..ARCHIVE_ALIGN {
            let mut buf = vec![0u8; offset];
            buf.extend_from_slice(&bytes);
            let at = &buf[offset..];
            assert_eq!(Envelope::view(at).expect("view"), view, "offset {offset}");
            assert_eq!(Envelope::decode(at).expect("decode"), envelope);
        }
    }

    #[test]
    fn stored_fields_are_the_decoded_envelope_s_borrowed() {
        let envelope = Envelope {
            event_id: "evt_9".into(),
            topic: "payment.failed".into(),
            event_type: "payment.failed".into(),
            key: "pay_9".into(),
            sequence: Some(4),
            received_us: 77,
            service: "payment-service".into(),
            correlation_id: "corr_9".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: None,
            payload: vec![0, 159, 146],
            format: PayloadFormat::Raw,
            content_type: Some("application/octet-stream".into()),
            expires_us: Some(99),
        };
        // At an offset that is not aligned, as a slice of a read reply may lie.
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&envelope.encode());
        let stored = Stored::open(&bytes[1..]).expect("open");
        let f = stored.fields().expect("fields");
        let read = (
            [f.event_id, f.topic, f.event_type, f.key, f.service],
            [f.correlation_id, f.traceparent],
            (
                f.sequence,
                f.received_us,
                f.payload,
                f.format,
                f.content_type,
            ),
        );
        let want = (
            [
                "evt_9",
                "payment.failed",
                "payment.failed",
                "pay_9",
                "payment-service",
            ],
            ["corr_9", envelope.traceparent.as_str()],
            (
                Some(4),
                77,
                &envelope.payload[..],
                PayloadFormat::Raw,
                Some("application/octet-stream"),
            ),
        );
        assert_eq!(read, want);
        let mut newer = envelope.encode();
        newer[0] = ENVELOPE_VERSION + 1;
        assert!(matches!(
            Stored::open(&newer),
            Err(EnvelopeError::Version(v)) if v == ENVELOPE_VERSION + 1
        ));
    }
}
