//! Data subjects (GDPR): which events are about whom — the ids found at configured JSON
//! pointers of some topics' events — and exporting or erasing every copy of them: the
//! event store's rows (redacted to a tombstone), and the entries Redis still holds in the
//! streams and DLQs (deleted). Nothing of the subject is written to the logs or the audit
//! trail, only how many events were touched.

use serde_json::{json, Value};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::sealing::{unseal, Plain};
use super::{EventStore, EventStoreError};
use crate::config::SubjectConfig;
use crate::delivery::Runtime;
use crate::model::envelope::Envelope;
use crate::model::pattern::TopicPattern;
use crate::store::dlq;

/// Entries read from Redis at a time.
const PAGE: usize = 1000;

/// The subject rules.
#[derive(Debug, Default)]
pub struct Subjects {
    rules: Vec<(Vec<TopicPattern>, Vec<String>)>,
}

impl Subjects {
    /// The rules of a validated config.
    pub fn new(config: &[SubjectConfig]) -> Self {
        Self {
            rules: config
                .iter()
                .map(|rule| {
                    (
                        rule.topics
                            .iter()
                            .filter_map(|t| TopicPattern::parse(t).ok())
                            .collect(),
                        rule.pointers.clone(),
                    )
                })
                .collect(),
        }
    }

    /// The subject ids of an event of `topic` (strings and numbers at the pointers).
    pub fn of(&self, topic: &str, payload: &[u8]) -> Vec<String> {
        let pointers: Vec<&String> = self
            .rules
            .iter()
            .filter(|(topics, _)| topics.iter().any(|t| t.matches(topic)))
            .flat_map(|(_, pointers)| pointers)
            .collect();
        if pointers.is_empty() {
            return Vec::new();
        }
        // Read in place: only the pointers' values are parsed, not the whole event.
        let Ok(text) = std::str::from_utf8(payload) else {
            return Vec::new();
        };
        let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text) else {
            return Vec::new();
        };
        let Ok(event) = crate::model::event::RawEvent::parse(raw) else {
            return Vec::new();
        };
        let mut found: Vec<String> = pointers
            .iter()
            .filter_map(
                |p| match serde_json::from_str::<Value>(event.pointer(p)?.get()).ok()? {
                    Value::String(s) => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                },
            )
            .collect();
        found.sort();
        found.dedup();
        found
    }
}

/// How many copies of a subject's events an erasure touched.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Erased {
    /// Keys deleted (1 when the subject's events were sealed): every sealed copy,
    /// backups included, is unreadable from then on.
    pub keys: u64,
    /// Rows of the event store redacted.
    pub event_store: u64,
    /// Stream entries deleted from Redis.
    pub streams: u64,
    /// DLQ entries deleted from Redis.
    pub dlqs: u64,
    /// What a search for the subject finds afterwards (0).
    pub remaining: u64,
}

/// Every Redis key that holds events: the partitions of every stream, and every DLQ
/// stream Redis holds (a deleted subscription's too).
async fn redis_keys(delivery: &Runtime) -> Result<Vec<(&'static str, String)>, EventStoreError> {
    let (partitions, dlqs) = delivery
        .event_keys()
        .await
        .map_err(|e| EventStoreError::Config(format!("redis: {e}")))?;
    Ok(partitions
        .into_iter()
        .map(|k| ("redis", k.to_string()))
        .chain(dlqs.into_iter().map(|k| ("dlq", k)))
        .collect())
}

/// Calls `each` with every Redis entry about `subject`: (source, key, id, envelope).
async fn scan_redis(
    delivery: &Runtime,
    subjects: &Subjects,
    subject: &str,
    mut each: impl FnMut(&'static str, &str, &str, Envelope),
) -> Result<(), EventStoreError> {
    let mut conn = delivery
        .connection()
        .map_err(|e| EventStoreError::Config(e.to_string()))?;
    for (source, key) in redis_keys(delivery).await? {
        let mut from = "-".to_string();
        loop {
            let page = dlq::page(&mut conn, &key, &from, PAGE)
                .await
                .map_err(|e| EventStoreError::Config(format!("redis: {e}")))?;
            let Some((last, _)) = page.last() else {
                break;
            };
            from = format!("({last}");
            for (id, raw) in page {
                let Ok(envelope) = Envelope::decode(&raw) else {
                    continue;
                };
                if subjects
                    .of(&envelope.topic, &envelope.payload)
                    .iter()
                    .any(|s| s == subject)
                {
                    each(source, &key, &id, envelope);
                }
            }
        }
    }
    Ok(())
}

/// Every event about `subject` as JSON lines: the event store's rows, then the entries
/// Redis holds (streams and DLQs), each `{"source", "event_id", "topic", "stored_at" |
/// "key", "event"}`; sent to `out` as they are found.
pub async fn export(
    store: &EventStore,
    delivery: &Runtime,
    subjects: &Subjects,
    subject: &str,
    out: tokio::sync::mpsc::Sender<String>,
) -> Result<u64, EventStoreError> {
    let mut n = 0;
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT event_id, topic, stored_at, payload::text, encode(payload_bytes, 'base64'),
                    sealed, subjects, event_type
               FROM evr_events WHERE subjects @> ARRAY[$1] AND subjects <> '{}' ORDER BY stored_at",
            &[&subject],
        )
        .await?;
    let ring = store.ring_of(&rows, 5, 6).await?;
    for row in rows {
        let event_id: String = row.get(0);
        let opened = unseal(
            &ring,
            row.get(5),
            &row.get::<_, Vec<String>>(6),
            &event_id,
            row.get(7),
        );
        let event = match opened {
            Some(Plain::Json(json)) => serde_json::from_slice(&json).unwrap_or(Value::Null),
            Some(Plain::Bytes(bytes)) => json!({ "base64": STANDARD.encode(bytes) }),
            None => row
                .get::<_, Option<String>>(3)
                .and_then(|p| serde_json::from_str::<Value>(&p).ok())
                .unwrap_or_else(|| json!({ "base64": row.get::<_, Option<String>>(4) })),
        };
        let stored_at: std::time::SystemTime = row.get(2);
        let line = json!({
            "source": "event_store",
            "event_id": event_id,
            "topic": row.get::<_, String>(1),
            "stored_at": humantime::format_rfc3339_micros(stored_at).to_string(),
            "event": event,
        });
        if out.send(line.to_string()).await.is_err() {
            return Ok(n);
        }
        n += 1;
    }
    let mut lines = Vec::new();
    scan_redis(delivery, subjects, subject, |source, key, id, envelope| {
        let event = serde_json::from_slice::<Value>(&envelope.payload).unwrap_or(Value::Null);
        lines.push(json!({
            "source": source,
            "event_id": envelope.event_id,
            "topic": envelope.topic,
            "key": key,
            "id": id,
            "event": event,
        }));
    })
    .await?;
    for line in lines {
        if out.send(line.to_string()).await.is_err() {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// Redacts every event store row about `subject` to a tombstone (its id, type and time
/// stay; its payload, the subject's ids and a key equal to the subject go) and deletes the
/// Redis entries about it; then searches again.
pub async fn erase(
    store: &EventStore,
    delivery: &Runtime,
    subjects: &Subjects,
    subject: &str,
) -> Result<Erased, EventStoreError> {
    let client = store.client().await?;
    // The key first: from here on no copy of a sealed payload opens, wherever it is.
    let keys = store.keys().shred(subject).await?;
    let redacted = client
        .execute(
            "UPDATE evr_events
                SET payload = json_build_object('erased', true, 'event_id', event_id, 'event_type', event_type),
                    payload_bytes = NULL,
                    sealed = NULL,
                    subjects = '{}',
                    entity_key = CASE WHEN entity_key = $1 THEN 'erased' ELSE entity_key END,
                    correlation_id = CASE WHEN correlation_id = $1 THEN 'erased' ELSE correlation_id END
              WHERE subjects @> ARRAY[$1] AND subjects <> '{}'",
            &[&subject],
        )
        .await?;
    let mut found = Vec::new();
    scan_redis(delivery, subjects, subject, |source, key, id, _| {
        found.push((source, key.to_string(), id.to_string()))
    })
    .await?;
    let mut erased = Erased {
        keys,
        event_store: redacted,
        ..Erased::default()
    };
    let mut conn = delivery
        .connection()
        .map_err(|e| EventStoreError::Config(e.to_string()))?;
    for (source, key, id) in found {
        dlq::delete(&mut conn, &key, &id)
            .await
            .map_err(|e| EventStoreError::Config(format!("redis: {e}")))?;
        match source {
            "dlq" => erased.dlqs += 1,
            _ => erased.streams += 1,
        }
    }
    // The check: nothing of the subject is found any more.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let counting = tokio::spawn(async move {
        let mut n = 0u64;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    export(store, delivery, subjects, subject, tx).await?;
    erased.remaining = counting.await.unwrap_or(0);
    tracing::info!(
        keys = erased.keys,
        event_store = erased.event_store,
        streams = erased.streams,
        dlqs = erased.dlqs,
        remaining = erased.remaining,
        "a data subject's events erased"
    );
    Ok(erased)
}
