//! DLQ replay: dead letters sent through the subscription's subscriber again, in DLQ order,
//! each removed once it is delivered (or the subscriber drops it).

use redis::aio::ConnectionManager;
use serde::Serialize;

use super::transport::{Headers, Item, Outcome, Request, Subscriber};
use crate::model::envelope::Envelope;
use crate::store::dlq;

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Delivered (or dropped by the subscriber) and removed from the DLQ.
    pub replayed: u64,
    /// Failed again; still in the DLQ.
    pub failed: u64,
}

/// Entries read from a DLQ at a time.
const PAGE: usize = 500;

/// Replays the dead letters in `keys` (all, or only the cursors in `only`) to `subscriber`,
/// one event a request.
pub async fn replay(
    conn: &mut ConnectionManager,
    keys: &[String],
    subscriber: &dyn Subscriber,
    single: bool,
    only: Option<&[String]>,
) -> redis::RedisResult<ReplayReport> {
    let mut report = ReplayReport::default();
    for (index, key) in keys.iter().enumerate() {
        let mut from = "-".to_string();
        loop {
            let entries = dlq::page(conn, key, &from, PAGE).await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            from = format!("({last}");
            for (id, raw) in entries {
                let cursor = format!("{index}-{id}");
                if only.is_some_and(|ids| !ids.contains(&cursor)) {
                    continue;
                }
                match send_once(subscriber, key, &id, raw, single, false).await {
                    Some(Outcome::Delivered | Outcome::Drop(_)) => {
                        dlq::delete(conn, key, &id).await?;
                        report.replayed += 1;
                    }
                    Some(Outcome::Retry(_)) => report.failed += 1,
                    // Unreadable: left where it is, as listing skips it.
                    None => {}
                }
            }
        }
    }
    Ok(report)
}

/// Sends one stored entry (a dead letter, or an event read back from the event store,
/// `replay`), one event a request; `None` when its envelope cannot be read.
pub async fn send_once(
    subscriber: &dyn Subscriber,
    key: &str,
    id: &str,
    raw: bytes::Bytes,
    single: bool,
    replay: bool,
) -> Option<Outcome> {
    let view = Envelope::view(&raw).ok()?;
    let Ok(presented) = subscriber.present(&raw, &view) else {
        return None;
    };
    // Never sent elsewhere than its route (a 404 would drop it).
    let Some(presented) = presented else {
        return Some(Outcome::Retry("no route of the app takes it".into()));
    };
    let Ok(endpoint) = subscriber.pick() else {
        return Some(Outcome::Retry("every endpoint is unhealthy".into()));
    };
    let headers = single.then(|| Headers {
        event_id: view.event_id.clone(),
        topic: view.topic.clone(),
    });
    // A replayed event continues its trace, like any attempt.
    let traceparent = crate::model::trace::TraceContext::parse(&view.traceparent)
        .map_or_else(|| view.traceparent.clone(), |c| c.child().to_traceparent());
    let request = Request {
        items: vec![Item {
            partition: key.into(),
            id: id.to_string(),
            body: presented.body,
            content_type: presented.content_type,
        }],
        route: presented.route,
        headers,
        attempt: 1,
        traceparent: Some(traceparent),
        replay,
    };
    let reply = subscriber.send(endpoint, request).await;
    reply.outcomes.into_iter().next()
}
