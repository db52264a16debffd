//! Reading the event store: events by correlation id, key, type, topic, service and time,
//! newest or oldest first, a page at a time (keyset pagination on where each event was
//! stored); one event by id; and a business flow's trace, every event of a correlation id
//! with each subscription's outcomes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;

use super::lookups;
use super::sealing::{unseal, KeyRing, Plain};
use super::{EventStore, EventStoreError};

/// Most events in one page.
pub const MAX_LIMIT: usize = 1000;

/// Most events in one trace.
pub const MAX_TRACE: usize = 10_000;

/// What events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `metadata.correlation_id`.
    pub correlation_id: Option<String>,
    /// The entity key.
    pub key: Option<String>,
    /// `event_type`.
    pub event_type: Option<String>,
    /// The topic it was published to.
    pub topic: Option<String>,
    /// The publishing service.
    pub service: Option<String>,
    /// Stored at or after.
    pub from: Option<SystemTime>,
    /// Stored before.
    pub to: Option<SystemTime>,
    /// Most events (at most [`MAX_LIMIT`]).
    pub limit: usize,
    /// Continue after this page's `next`.
    pub after: Option<Cursor>,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    /// Only topics matching one of these POSIX regular expressions (none: every topic),
    /// so that a page and its `next` say nothing of events the caller may not see.
    pub readable: Option<Vec<String>>,
}

/// Where a page ended: the last event's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    stored_us: i64,
    stream: String,
    partition: i32,
    redis_seq: i64,
}

impl Cursor {
    /// Reads `{µs}~{stream}~{partition}~{redis id}`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(4, '~');
        Some(Self {
            stored_us: parts.next()?.parse().ok()?,
            stream: parts.next()?.to_string(),
            partition: parts.next()?.parse().ok()?,
            redis_seq: parts.next()?.parse().ok()?,
        })
    }

    fn text(&self) -> String {
        format!(
            "{}~{}~{}~{}",
            self.stored_us, self.stream, self.partition, self.redis_seq
        )
    }
}

/// One archived event.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub event_id: String,
    pub event_type: String,
    pub topic: String,
    pub stream: String,
    pub partition: i32,
    pub redis_id: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// The event's own time (its `timestamp`), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// When evrouter received it.
    pub received_at: String,
    /// When Redis stored it (the time in its stream id).
    pub stored_at: String,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The payload (JSON), or its bytes in base64 when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(skip)]
    cursor: Option<Cursor>,
}

/// One outcome of an event at a subscription.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub subscription: String,
    pub fate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    pub attempt: i32,
    pub at: String,
    /// From received to this outcome.
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An event of a trace with its outcomes.
#[derive(Debug, Clone, Serialize)]
pub struct TracedEvent {
    #[serde(flatten)]
    pub event: StoredEvent,
    pub outcomes: Vec<Outcome>,
}

/// A page of events.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

const COLUMNS: &str = "stored_at, stream, partition, redis_id, event_id, event_type, topic, \
    entity_key, correlation_id, causation_id, service, sequence, event_time, received_at, \
    format, payload::text, encode(payload_bytes, 'base64'), trace_id, redis_seq, sealed, subjects";

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
        .min(i64::MAX as u128) as i64
}

fn event(row: &tokio_postgres::Row, ring: &KeyRing) -> StoredEvent {
    let stored_at: SystemTime = row.get(0);
    let event_id: String = row.get(4);
    let event_type: String = row.get(5);
    let (payload, payload_base64) = match unseal(
        ring,
        row.get(19),
        &row.get::<_, Vec<String>>(20),
        &event_id,
        &event_type,
    ) {
        None => (
            row.get::<_, Option<String>>(15)
                .and_then(|p| RawValue::from_string(p).ok()),
            row.get(16),
        ),
        Some(Plain::Json(json)) => (
            String::from_utf8(json)
                .ok()
                .and_then(|p| RawValue::from_string(p).ok()),
            None,
        ),
        Some(Plain::Bytes(bytes)) => (None, Some(STANDARD.encode(bytes))),
    };
    let stream: String = row.get(1);
    let partition: i32 = row.get(2);
    let redis_id: String = row.get(3);
    StoredEvent {
        cursor: Some(Cursor {
            stored_us: micros(stored_at),
            stream: stream.clone(),
            partition,
            redis_seq: row.get(18),
        }),
        stored_at: rfc3339(stored_at),
        stream,
        partition,
        redis_id,
        event_id,
        event_type,
        topic: row.get(6),
        key: row.get(7),
        correlation_id: row.get(8),
        causation_id: row.get(9),
        service: row.get(10),
        sequence: row.get(11),
        timestamp: row.get::<_, Option<SystemTime>>(12).map(rfc3339),
        received_at: rfc3339(row.get(13)),
        format: row.get(14),
        payload,
        payload_base64,
        trace_id: row.get(17),
    }
}

impl EventStore {
    /// A page of events matching `filter`; `visible` says which topics the caller may
    /// see (events of others are left out of the page).
    pub async fn events(
        &self,
        filter: &EventFilter,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Page, EventStoreError> {
        let mut client = self.client().await?;
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
            params.push(value);
            clauses.push(clause.replace('?', &format!("${}", params.len())));
        };
        for (column, value) in [
            ("correlation_id", &filter.correlation_id),
            ("entity_key", &filter.key),
            ("event_type", &filter.event_type),
            ("topic", &filter.topic),
            ("service", &filter.service),
        ] {
            if let Some(value) = value {
                add(&format!("{column} = ?"), Box::new(value.clone()));
            }
        }
        if let Some(readable) = &filter.readable {
            add("topic ~ ANY(?)", Box::new(readable.clone()));
        }
        if let Some(from) = filter.from {
            add("stored_at >= ?", Box::new(from));
        }
        if let Some(to) = filter.to {
            add("stored_at < ?", Box::new(to));
        }
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        if let Some(after) = &filter.after {
            let at = UNIX_EPOCH + Duration::from_micros(after.stored_us.max(0) as u64);
            let op = if filter.newest_first { "<" } else { ">" };
            params.push(Box::new(at));
            params.push(Box::new(after.stream.clone()));
            params.push(Box::new(after.partition));
            params.push(Box::new(after.redis_seq));
            let n = params.len();
            clauses.push(format!(
                "(stored_at, stream, partition, redis_seq) {op} (${}, ${}, ${}, ${})",
                n - 3,
                n - 2,
                n - 1,
                n
            ));
        }
        let limit = filter.limit.clamp(1, MAX_LIMIT);
        let sql = format!(
            "SELECT {COLUMNS} FROM evr_events {} ORDER BY stored_at {order}, stream {order}, partition {order}, redis_seq {order} LIMIT {}",
            if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            },
            limit + 1
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        // A key or a flow is looked up through the open days' bloom summaries.
        let rows = if filter.key.is_some() || filter.correlation_id.is_some() {
            lookups::lookup(&mut client, &sql, &refs).await?
        } else {
            client.query(&sql, &refs).await?
        };
        let more = rows.len() > limit;
        let ring = self.ring_of(&rows, 19, 20).await?;
        let mut events: Vec<StoredEvent> = rows
            .iter()
            .take(limit)
            .map(|row| event(row, &ring))
            .collect();
        events.retain(|e| visible(&e.topic));
        // Only a visible event's place is ever given (the filter above makes them all so).
        let next = more
            .then(|| {
                events
                    .last()
                    .and_then(|e| e.cursor.as_ref())
                    .map(Cursor::text)
            })
            .flatten();
        Ok(Page { events, next })
    }

    /// The events of `event_id` (one, unless it was stored in several streams).
    pub async fn event(&self, event_id: &str) -> Result<Vec<TracedEvent>, EventStoreError> {
        self.traced(
            &format!(
                "SELECT {COLUMNS} FROM evr_events WHERE event_id = $1 ORDER BY stored_at LIMIT 10"
            ),
            event_id,
        )
        .await
    }

    /// Every event of a business flow in stored order, with each subscription's outcomes.
    pub async fn trace(&self, correlation_id: &str) -> Result<Vec<TracedEvent>, EventStoreError> {
        self.traced(
            &format!(
                "SELECT {COLUMNS} FROM evr_events WHERE correlation_id = $1 ORDER BY stored_at, stream, partition, redis_seq LIMIT {MAX_TRACE}"
            ),
            correlation_id,
        )
        .await
    }

    /// The events `sql` looks up by `id`, each with its outcomes.
    async fn traced(&self, sql: &str, id: &str) -> Result<Vec<TracedEvent>, EventStoreError> {
        let mut client = self.client().await?;
        let rows = lookups::lookup(&mut client, sql, &[&id]).await?;
        let ring = self.ring_of(&rows, 19, 20).await?;
        self.with_outcomes(
            &mut client,
            rows.iter().map(|row| event(row, &ring)).collect(),
        )
        .await
    }

    async fn with_outcomes(
        &self,
        client: &mut tokio_postgres::Client,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<TracedEvent>, EventStoreError> {
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let rows = lookups::lookup(
            client,
            "SELECT event_id, subscription, fate, status, attempt, at, latency_us, error
               FROM evr_outcomes WHERE event_id = ANY($1) ORDER BY at",
            &[&ids],
        )
        .await?;
        let mut by_event: std::collections::HashMap<String, Vec<Outcome>> = Default::default();
        for row in &rows {
            by_event.entry(row.get(0)).or_default().push(Outcome {
                subscription: row.get(1),
                fate: row.get(2),
                status: row.get(3),
                attempt: row.get(4),
                at: rfc3339(row.get(5)),
                latency_ms: row.get::<_, i64>(6) as f64 / 1000.0,
                error: row.get(7),
            });
        }
        Ok(events
            .into_iter()
            .map(|event| TracedEvent {
                outcomes: by_event.remove(&event.event_id).unwrap_or_default(),
                event,
            })
            .collect())
    }
}
