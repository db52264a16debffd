//! The publish pipeline below HTTP: check the body, validate each event, enrich it, pick
//! its partition, hand it to that partition's writer, and wait for Redis to confirm. Dapr
//! bodies become envelopes in [`dapr`] and take the same way from there.

pub mod dapr;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use serde_json::value::RawValue;

use crate::auth::quota::{Limited, Quota};
use crate::catalog::{partition_of, Placement, StreamCatalog};
use crate::model::envelope::{Envelope, PayloadFormat};
use crate::model::event::{deeper_than, raw_str, raw_u64, Body, RawEvent, RawMetadata};
use crate::schema::{SchemaRegistry, Violation};
use crate::store::{Appended, Entry, StoreError, WriterPool};
use crate::traces::{Kind, Span, Started, Tracer};

/// Limits applied to every publish.
#[derive(Debug, Clone)]
pub struct PublishLimits {
    /// Most events in one batch.
    pub max_batch: usize,
    /// Deepest JSON nesting.
    pub max_depth: usize,
    /// Longest wait for Redis to confirm.
    pub timeout: Duration,
}

/// What the caller knows about the request, apart from its body.
#[derive(Debug, Default, Clone)]
pub struct PublishContext {
    /// `traceparent` of the request, if any.
    pub traceparent: Option<String>,
    /// `tracestate` of the request, if any.
    pub tracestate: Option<String>,
    /// The publisher's name and quotas, when it has any.
    pub quota: Option<(String, Arc<Quota>)>,
}

/// Where one stored event went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The event's `event_id`.
    pub event_id: String,
    /// The stream holding it.
    pub stream: String,
    /// Its partition number.
    pub partition: u32,
    /// Its Redis stream id.
    pub id: String,
    /// True when the event had already been stored within the dedup window.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The answer to a publish: one receipt, or one per event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PublishOutcome {
    /// The body was one event.
    One(Receipt),
    /// The body was an array of events.
    Many(Vec<Receipt>),
}

impl PublishOutcome {
    /// How many events the answer covers.
    pub fn events(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(receipts) => receipts.len(),
        }
    }
}

/// One violation in one event of a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventViolation {
    /// Index of the event in a batch; absent for a single event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// JSON pointer into that event.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Why a publish was refused. Nothing of a refused publish is stored, except where a
/// store failure struck after some writers had already confirmed their part.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic name is not valid.
    #[error("invalid topic: {0}")]
    InvalidTopic(&'static str),
    /// The body is not UTF-8.
    #[error("body is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    /// The body nests deeper than allowed.
    #[error("JSON nesting deeper than {0} levels")]
    TooDeep(usize),
    /// The body is not JSON.
    #[error("malformed JSON: {message}")]
    MalformedJson {
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The batch is empty.
    #[error("empty batch")]
    EmptyBatch,
    /// The batch holds more events than allowed.
    #[error("batch of {len} events exceeds the limit of {max}")]
    BatchTooLarge {
        /// Events sent.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One or more events are invalid; nothing was stored.
    #[error("{} invalid event field(s)", .0.len())]
    Invalid(Vec<EventViolation>),
    /// No stream can take the topic.
    #[error("{0}")]
    NoStream(String),
    /// Redis did not confirm (down, slow, or the queue is full).
    #[error("event store unavailable: {0}")]
    Unavailable(StoreError),
    /// The publisher is over its quota; nothing was stored.
    #[error("{0}")]
    RateLimited(Limited),
}

/// One event, validated, enriched and encoded for its partition.
#[derive(Debug)]
pub struct PreparedEvent {
    /// Its `event_id`.
    pub event_id: String,
    /// Its partition in the placement's stream.
    pub partition: u32,
    /// The encoded envelope.
    pub value: Vec<u8>,
    /// Its publish span, when its trace is recorded.
    pub span: Option<Started>,
}

/// Validates one event and builds its envelope: the per-event CPU work of a publish. The
/// stored trace context is the event's publish span's (from `tracer`).
pub fn prepare_event(
    placement: &Placement,
    schemas: &SchemaRegistry,
    topic: &str,
    raw: &RawValue,
    context: &PublishContext,
    received_us: u64,
    tracer: &Tracer,
) -> Result<PreparedEvent, Vec<Violation>> {
    let event = RawEvent::parse(raw).map_err(|_| {
        vec![Violation {
            path: String::new(),
            message: "an event must be a JSON object".into(),
        }]
    })?;
    let metadata = RawMetadata::parse(event.metadata);
    let mut found = schemas.validate(&event, &metadata);
    let event_type = event.event_type.and_then(raw_str);
    if placement.stream.require_type_match
        && found.is_empty()
        && event_type.as_deref() != Some(topic)
    {
        found.push(Violation {
            path: "/event_type".into(),
            message: format!("must equal the topic `{topic}` on this stream"),
        });
    }
    if !found.is_empty() {
        return Err(found);
    }
    // The base schema has checked that these are strings.
    let event_id = event.event_id.and_then(raw_str).unwrap_or_default();
    let key = placement.key(&event, &metadata, &event_id);
    let partition = partition_of(&key, placement.stream.partitions);
    let text = |raw: Option<&RawValue>| raw.and_then(raw_str).unwrap_or_default().into_owned();
    // `tracestate` belongs to the request's `traceparent`: kept only when that is used.
    let own = metadata.traceparent.and_then(raw_str);
    let header = context
        .traceparent
        .as_deref()
        .filter(|t| crate::model::trace::is_valid_traceparent(t));
    let (incoming, tracestate) = match (&own, header) {
        (Some(own), _) => (Some(&**own), None),
        (None, Some(header)) => (Some(header), context.tracestate.clone()),
        (None, None) => (None, None),
    };
    let (traceparent, span) = tracer.begin_publish(incoming);
    let envelope = Envelope {
        event_id: event_id.to_string(),
        topic: topic.to_string(),
        event_type: event_type.unwrap_or_default().into_owned(),
        key: key.into_owned(),
        sequence: metadata.sequence.and_then(raw_u64),
        received_us,
        service: text(metadata.service),
        correlation_id: text(metadata.correlation_id),
        traceparent,
        tracestate,
        payload: event.raw.as_bytes().to_vec(),
        format: PayloadFormat::Event,
        content_type: None,
        expires_us: None,
    };
    Ok(PreparedEvent {
        event_id: envelope.event_id.clone(),
        partition,
        value: envelope.encode(),
        span,
    })
}

/// The publish pipeline, shared by every request.
pub struct Publisher {
    catalog: Arc<StreamCatalog>,
    schemas: Arc<SchemaRegistry>,
    writers: Arc<WriterPool>,
    limits: PublishLimits,
    tracer: Tracer,
}

struct Prepared {
    receipt_stream: String,
    partition: u32,
    event_id: String,
    writer: usize,
    entry: Entry,
    /// The publish span and when the event was received (µs since the epoch).
    span: Option<(Started, u64)>,
}

/// What the spans of a stored event's publish say, kept while its entry is written.
struct Traced {
    started: Started,
    received_us: u64,
    event_id: String,
    stream: String,
    partition: u32,
}

impl Publisher {
    /// Builds the pipeline.
    pub fn new(
        catalog: Arc<StreamCatalog>,
        schemas: Arc<SchemaRegistry>,
        writers: Arc<WriterPool>,
        limits: PublishLimits,
    ) -> Self {
        Self {
            catalog,
            schemas,
            writers,
            limits,
            tracer: Tracer::off(),
        }
    }

    /// Records the spans of each publish with `tracer`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Where the spans of publishes go.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The limits every publish is held to.
    pub fn limits(&self) -> &PublishLimits {
        &self.limits
    }

    /// Publishes a body (one event or an array) to `topic`; answers once Redis has
    /// confirmed every event.
    pub async fn publish(
        &self,
        topic: &str,
        body: &[u8],
        context: &PublishContext,
    ) -> Result<PublishOutcome, PublishError> {
        crate::model::topic::check_topic(topic).map_err(PublishError::InvalidTopic)?;
        let text = std::str::from_utf8(body).map_err(|e| PublishError::NotUtf8(e.valid_up_to()))?;
        let max_depth = self.limits.max_depth;
        let parsed = Body::parse(text).map_err(|e| {
            // serde_json stops at its own recursion limit: say so when depth is the cause.
            if deeper_than(text.as_bytes(), max_depth) {
                PublishError::TooDeep(max_depth)
            } else {
                PublishError::MalformedJson {
                    message: e.to_string(),
                }
            }
        })?;
        let (events, single) = match parsed {
            Body::One(raw) => (vec![raw], true),
            Body::Many(events) => (events, false),
        };
        let limit = if single {
            max_depth
        } else {
            max_depth.saturating_sub(1)
        };
        if events
            .iter()
            .any(|raw| deeper_than(raw.get().as_bytes(), limit))
        {
            return Err(PublishError::TooDeep(max_depth));
        }
        if events.is_empty() {
            return Err(PublishError::EmptyBatch);
        }
        if events.len() > self.limits.max_batch {
            return Err(PublishError::BatchTooLarge {
                len: events.len(),
                max: self.limits.max_batch,
            });
        }
        if let Some((who, quota)) = &context.quota {
            quota
                .admit(who, events.len(), body.len())
                .map_err(PublishError::RateLimited)?;
        }
        let prepared = self.prepare(topic, &events, single, context)?;
        let receipts = self.store(topic, prepared).await?;
        Ok(if single {
            PublishOutcome::One(receipts.into_iter().next().ok_or_else(|| {
                PublishError::Unavailable(StoreError::Refused("no receipt".into()))
            })?)
        } else {
            PublishOutcome::Many(receipts)
        })
    }

    /// Validates and encodes every event; refuses the whole body if any is invalid.
    fn prepare(
        &self,
        topic: &str,
        events: &[&RawValue],
        single: bool,
        context: &PublishContext,
    ) -> Result<Vec<Prepared>, PublishError> {
        let placement = self
            .catalog
            .placement(topic)
            .map_err(|e| PublishError::NoStream(e.to_string()))?;
        let received_us = crate::model::clock::now_us();
        let mut violations = Vec::new();
        let mut prepared = Vec::with_capacity(events.len());
        for (index, raw) in events.iter().enumerate() {
            let at = (!single).then_some(index);
            match prepare_event(
                &placement,
                &self.schemas,
                topic,
                raw,
                context,
                received_us,
                &self.tracer,
            ) {
                Ok(event) if violations.is_empty() => {
                    prepared.push(self.place(&placement, event, received_us));
                }
                Ok(_) => {}
                Err(found) => violations.extend(found.into_iter().map(|v| EventViolation {
                    index: at,
                    path: v.path,
                    message: v.message,
                })),
            }
        }
        if violations.is_empty() {
            Ok(prepared)
        } else {
            Err(PublishError::Invalid(violations))
        }
    }

    /// Puts an encoded event on its partition's writer.
    fn place(&self, placement: &Placement, event: PreparedEvent, received_us: u64) -> Prepared {
        let partition_key = placement.stream.partition_keys[event.partition as usize].clone();
        let dedup_key = placement
            .stream
            .dedup_window
            .map(|_| placement.stream.dedup_key(event.partition, &event.event_id));
        Prepared {
            receipt_stream: placement.stream.name.clone(),
            partition: event.partition,
            event_id: event.event_id,
            writer: self.writers.writer_of(&partition_key),
            entry: Entry {
                stream: placement.stream.clone(),
                partition_key,
                dedup_key,
                value: event.value,
            },
            span: event.span.map(|started| (started, received_us)),
        }
    }

    /// Stores events that arrive already enveloped (the Dapr API's CloudEvents and raw
    /// payloads, which the platform's schema does not describe) on `topic`'s stream, each
    /// in the partition of its key, with its publish span if its trace is recorded;
    /// answers once Redis has confirmed every one.
    pub async fn publish_envelopes(
        &self,
        topic: &str,
        envelopes: Vec<(Envelope, Option<Started>)>,
    ) -> Result<Vec<Receipt>, PublishError> {
        crate::model::topic::check_topic(topic).map_err(PublishError::InvalidTopic)?;
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let placement = self
            .catalog
            .placement(topic)
            .map_err(|e| PublishError::NoStream(e.to_string()))?;
        let prepared = envelopes
            .into_iter()
            .map(|(envelope, span)| {
                let received_us = envelope.received_us;
                let event = PreparedEvent {
                    partition: partition_of(&envelope.key, placement.stream.partitions),
                    value: envelope.encode(),
                    event_id: envelope.event_id,
                    span,
                };
                self.place(&placement, event, received_us)
            })
            .collect();
        self.store(topic, prepared).await
    }

    /// Hands the whole request to one writer (the first event's partition's), which writes
    /// it in one transaction when it holds several events: all of it is stored or none
    /// (Redis full, a timeout before the write), never a part. Waits for the confirmation.
    async fn store(
        &self,
        topic: &str,
        mut prepared: Vec<Prepared>,
    ) -> Result<Vec<Receipt>, PublishError> {
        let traced: Vec<Traced> = prepared
            .iter_mut()
            .filter_map(|p| {
                let (started, received_us) = p.span.take()?;
                Some(Traced {
                    started,
                    received_us,
                    event_id: p.event_id.clone(),
                    stream: p.receipt_stream.clone(),
                    partition: p.partition,
                })
            })
            .collect();
        if traced.is_empty() {
            return self.write(prepared).await;
        }
        let events = prepared.len() as i64;
        let submitted_us = crate::model::clock::now_us();
        let result = self.write(prepared).await;
        self.record_spans(topic, traced, &result, submitted_us, events);
        result
    }

    /// The publish span of each traced event and, a child of it, the span of its write.
    fn record_spans(
        &self,
        topic: &str,
        traced: Vec<Traced>,
        result: &Result<Vec<Receipt>, PublishError>,
        submitted_us: u64,
        events: i64,
    ) {
        let now = crate::model::clock::now_us();
        let error = result.as_ref().err().map(ToString::to_string);
        for t in traced {
            let receipt = result
                .as_ref()
                .ok()
                .and_then(|r| r.iter().find(|r| r.event_id == t.event_id));
            let mut publish = vec![
                ("messaging.system", "evrouter".into()),
                ("messaging.operation.type", "publish".into()),
                ("messaging.destination.name", topic.to_string().into()),
                ("messaging.message.id", t.event_id.clone().into()),
                ("evrouter.stream", t.stream.clone().into()),
                ("evrouter.partition", i64::from(t.partition).into()),
            ];
            if let Some(receipt) = receipt {
                publish.push(("evrouter.redis_id", receipt.id.clone().into()));
            }
            self.tracer.record(Span {
                context: t.started.context.child(),
                parent: Some(t.started.context.span_id),
                name: format!("XADD {}", t.stream),
                kind: Kind::Client,
                start_us: submitted_us,
                end_us: now,
                attributes: vec![
                    ("db.system.name", "redis".into()),
                    ("db.operation.name", "XADD".into()),
                    ("db.operation.batch.size", events.into()),
                    ("evrouter.partition", i64::from(t.partition).into()),
                ],
                links: Vec::new(),
                error: error.clone(),
            });
            self.tracer.record(Span {
                context: t.started.context,
                parent: t.started.parent,
                name: format!("publish {topic}"),
                kind: Kind::Server,
                start_us: t.received_us,
                end_us: now,
                attributes: publish,
                links: Vec::new(),
                error: error.clone(),
            });
        }
    }

    /// Hands the entries to their writer and waits for Redis to confirm them.
    async fn write(&self, prepared: Vec<Prepared>) -> Result<Vec<Receipt>, PublishError> {
        let writer = prepared.first().map_or(0, |p| p.writer);
        let mut entries = Vec::with_capacity(prepared.len());
        let mut receipts = Vec::with_capacity(prepared.len());
        for p in prepared {
            entries.push(p.entry);
            receipts.push(Receipt {
                event_id: p.event_id,
                stream: p.receipt_stream,
                partition: p.partition,
                id: String::new(),
                duplicate: false,
            });
        }
        if entries.is_empty() {
            return Ok(receipts);
        }
        if let Some(full) = entries
            .iter()
            .find(|e| e.stream.full.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(PublishError::Unavailable(StoreError::Full(format!(
                "stream `{}` is at its bound with entries its subscriptions have not acked",
                full.stream.name
            ))));
        }
        let rx = self
            .writers
            .submit(writer, entries)
            .map_err(PublishError::Unavailable)?;
        let appended = tokio::time::timeout(self.limits.timeout, rx)
            .await
            .map_err(|_| PublishError::Unavailable(StoreError::Timeout))?
            .map_err(|_| PublishError::Unavailable(StoreError::Closed))?
            .map_err(PublishError::Unavailable)?;
        if appended.len() != receipts.len() {
            return Err(PublishError::Unavailable(StoreError::Refused(
                "missing reply".into(),
            )));
        }
        for (receipt, appended) in receipts.iter_mut().zip(appended) {
            receipt.id = appended.id().to_string();
            receipt.duplicate = matches!(appended, Appended::Duplicate(_));
        }
        Ok(receipts)
    }
}
