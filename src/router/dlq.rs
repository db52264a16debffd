//! Dead-letter operations: list a subscription's DLQ (paged over its partitions), replay
//! entries through the subscription's endpoints again, and purge.
//!
//! A subscription's dead letters live beside each partition (`{partition}:dlq:{name}`, same
//! hash tag, so an event moves to the DLQ and is acked in one step). Listing walks those
//! keys in a fixed order; a cursor is `{key index}-{entry id}`.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::Value;
use serde::Serialize;

use super::subscription::Subscription;
use crate::deliver::{Answer, Deliverer, Endpoints, Outcome, Outgoing};
use crate::event::Envelope;
use crate::store::acks::dlq_key;

/// One dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// Cursor of this entry (use it in `after` and in replay `ids`).
    pub id: String,
    /// The partition the event was read from.
    pub partition: String,
    /// Its id in that partition.
    pub source_id: String,
    /// `event_id`.
    pub event_id: String,
    /// Topic.
    pub topic: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last HTTP status, if any.
    pub last_status: Option<u16>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// First and last attempt, ms since the epoch.
    pub first_attempt_ms: u64,
    /// Last attempt, ms since the epoch.
    pub last_attempt_ms: u64,
    /// The event as published.
    pub event: Box<serde_json::value::RawValue>,
}

/// A page of dead letters.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Entries, oldest first within each partition.
    pub entries: Vec<DeadLetter>,
    /// Cursor for the next page, if there may be more.
    pub next: Option<String>,
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Delivered (or dropped by the subscriber) and removed from the DLQ.
    pub replayed: u64,
    /// Failed again; still in the DLQ.
    pub failed: u64,
}

/// The DLQ keys of a subscription, in a fixed order.
pub fn keys(partitions: &[Arc<str>], subscription: &str) -> Vec<String> {
    let mut keys: Vec<String> = partitions
        .iter()
        .map(|p| dlq_key(p, subscription))
        .collect();
    keys.sort();
    keys
}

fn parse_cursor(cursor: &str) -> Option<(usize, String)> {
    let (index, id) = cursor.split_once('-')?;
    Some((index.parse().ok()?, id.to_string()))
}

fn field<'a>(map: &'a HashMap<String, Value>, name: &str) -> Option<&'a [u8]> {
    match map.get(name) {
        Some(Value::BulkString(bytes)) => Some(bytes),
        _ => None,
    }
}

fn text(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    field(map, name).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn number<T: std::str::FromStr>(map: &HashMap<String, Value>, name: &str) -> Option<T> {
    text(map, name)?.parse().ok()
}

/// Lists up to `limit` dead letters after `after`.
pub async fn list(
    conn: &mut ConnectionManager,
    keys: &[String],
    limit: usize,
    after: Option<&str>,
) -> redis::RedisResult<Page> {
    let (mut index, mut from) = match after.and_then(parse_cursor) {
        Some((index, id)) => (index, format!("({id}")),
        None => (0, "-".to_string()),
    };
    let mut entries = Vec::new();
    while index < keys.len() && entries.len() < limit {
        let want = limit - entries.len();
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys[index])
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(want)
            .query_async(conn)
            .await?;
        let exhausted = range.ids.len() < want;
        if let Some(last) = range.ids.last() {
            from = format!("({}", last.id);
        }
        for entry in range.ids {
            if let Some(letter) = to_dead_letter(index, entry) {
                entries.push(letter);
            }
        }
        if exhausted {
            index += 1;
            from = "-".to_string();
        }
    }
    let next = entries
        .last()
        .filter(|_| entries.len() >= limit)
        .map(|e| e.id.clone());
    Ok(Page { entries, next })
}

/// Reads one DLQ entry; `None` when it cannot be decoded (it is skipped).
fn to_dead_letter(index: usize, entry: redis::streams::StreamId) -> Option<DeadLetter> {
    let envelope = field(&entry.map, "e").and_then(|b| Envelope::decode(b).ok())?;
    let event = String::from_utf8(envelope.payload)
        .ok()
        .and_then(|s| serde_json::value::RawValue::from_string(s).ok())?;
    Some(DeadLetter {
        id: format!("{index}-{}", entry.id),
        partition: text(&entry.map, "partition").unwrap_or_default(),
        source_id: text(&entry.map, "source_id").unwrap_or_default(),
        event_id: envelope.event_id,
        topic: envelope.topic,
        reason: text(&entry.map, "reason").unwrap_or_default(),
        attempts: number(&entry.map, "attempts").unwrap_or(0),
        last_status: number(&entry.map, "last_status"),
        last_error: text(&entry.map, "last_error"),
        first_attempt_ms: number(&entry.map, "first_attempt_ms").unwrap_or(0),
        last_attempt_ms: number(&entry.map, "last_attempt_ms").unwrap_or(0),
        event,
    })
}

/// Sends dead letters through the subscription's endpoints again, in DLQ order, and
/// removes each one that is delivered (or that the subscriber drops). `only` limits the
/// replay to those cursors.
pub async fn replay(
    conn: &mut ConnectionManager,
    keys: &[String],
    sub: &Subscription,
    deliverer: &Deliverer,
    only: Option<&[String]>,
) -> redis::RedisResult<ReplayReport> {
    let endpoints = Endpoints::new(
        &sub.spec.endpoints,
        sub.spec.breaker.failures,
        std::time::Duration::from_millis(sub.spec.breaker.cooldown_ms),
    );
    let timeout = std::time::Duration::from_millis(sub.spec.timeout_ms);
    let mut report = ReplayReport::default();
    for (index, key) in keys.iter().enumerate() {
        let mut from = "-".to_string();
        loop {
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(500)
                .query_async(conn)
                .await?;
            let Some(last) = range.ids.last() else { break };
            from = format!("({}", last.id);
            for entry in &range.ids {
                let cursor = format!("{index}-{}", entry.id);
                if only.is_some_and(|ids| !ids.contains(&cursor)) {
                    continue;
                }
                let Some(envelope) = field(&entry.map, "e").and_then(|b| Envelope::decode(b).ok())
                else {
                    continue;
                };
                let answer = match endpoints.pick() {
                    Ok((endpoint, url)) => {
                        let answer = match outgoing(sub, &envelope, url) {
                            Some((body, content_type, routed)) => {
                                deliverer
                                    .send(Outgoing {
                                        url: routed.as_ref().unwrap_or(url),
                                        body,
                                        event_id: Some(&envelope.event_id),
                                        topic: Some(&envelope.topic),
                                        attempt: 1,
                                        traceparent: Some(&envelope.traceparent),
                                        content_type: &content_type,
                                        timeout,
                                    })
                                    .await
                            }
                            // Never sent elsewhere than its route (a 404 would drop it).
                            None => Answer::Failed("no route of the app takes it".into()),
                        };
                        endpoints.report(endpoint, answer.healthy());
                        settle_bulk(sub, answer)
                    }
                    Err(_) => Answer::Failed("every endpoint is unhealthy".into()),
                };
                match answer {
                    Answer::Http {
                        outcome: Outcome::Delivered | Outcome::Drop(_),
                        ..
                    } => {
                        let _: i64 = redis::cmd("XDEL")
                            .arg(key)
                            .arg(&entry.id)
                            .query_async(conn)
                            .await?;
                        report.replayed += 1;
                    }
                    _ => report.failed += 1,
                }
            }
        }
    }
    Ok(report)
}

/// What a replay sends: the body, its content type and, for a Dapr app, the route's URL
/// (a bulk app gets a bulk body of one entry). `None` when a Dapr app has no route for it.
fn outgoing(
    sub: &Subscription,
    envelope: &Envelope,
    url: &hyper::Uri,
) -> Option<(bytes::Bytes, String, Option<hyper::Uri>)> {
    let Some(target) = &sub.spec.dapr else {
        return Some((
            bytes::Bytes::from(envelope.payload.clone()),
            "application/json".into(),
            None,
        ));
    };
    let app = crate::dapr::deliver::for_app(target, sub.routes.as_deref(), envelope)?;
    let routed = format!("{}{}", url.to_string().trim_end_matches('/'), app.path)
        .parse::<hyper::Uri>()
        .ok()?;
    if sub.spec.mode == crate::router::subscription::DeliveryMode::Bulk {
        let body = crate::dapr::deliver::bulk_body(
            target,
            &[(REPLAY_ENTRY, &app.body, &*app.content_type)],
        );
        return Some((body, "application/json".into(), Some(routed)));
    }
    Some((app.body, app.content_type.to_string(), Some(routed)))
}

/// The entry id of a replayed event in a bulk body.
const REPLAY_ENTRY: &str = "replay";

/// A bulk app's answer to a replay: its entry's status decides (none is a retry).
fn settle_bulk(sub: &Subscription, answer: Answer) -> Answer {
    let bulk_app =
        sub.spec.dapr.is_some() && sub.spec.mode == crate::router::subscription::DeliveryMode::Bulk;
    match answer {
        Answer::Http {
            status,
            outcome: Outcome::Delivered,
            body,
        } if bulk_app => {
            let statuses = crate::dapr::deliver::bulk_statuses(&body).unwrap_or_default();
            let outcome = match statuses.get(REPLAY_ENTRY) {
                Some(said) => crate::deliver::status_outcome(said),
                None => Outcome::Retry("the entry is missing from the app's statuses".into()),
            };
            Answer::Http {
                status,
                outcome,
                body,
            }
        }
        other => other,
    }
}

/// Deletes every dead letter of the subscription; returns how many there were.
pub async fn purge(conn: &mut ConnectionManager, keys: &[String]) -> redis::RedisResult<u64> {
    let mut purged = 0;
    for key in keys {
        let (len, _): (u64, i64) = redis::pipe()
            .cmd("XLEN")
            .arg(key)
            .cmd("DEL")
            .arg(key)
            .query_async(conn)
            .await?;
        purged += len;
    }
    Ok(purged)
}
