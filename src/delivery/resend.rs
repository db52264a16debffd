//! Stored entries sent to a subscriber again, outside the partition workers: dead letters
//! (a DLQ redrive) and events read back from the event store (a replay).

use super::transport::{Headers, Item, Outcome, Request, Subscriber};
use crate::model::envelope::Envelope;

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
    let entry = Stored {
        key: key.to_string(),
        id: id.to_string(),
        raw,
    };
    send_stored(subscriber, std::slice::from_ref(&entry), single, 1, replay)
        .await
        .pop()
        .flatten()
}

/// An entry presented for its subscriber, and where its outcome goes.
struct Ready {
    index: usize,
    item: Item,
    route: Option<std::sync::Arc<str>>,
    headers: Option<Headers>,
    traceparent: String,
}

/// A stored entry to send again: the partition it is in, its id there, and its bytes.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The partition's key.
    pub key: String,
    /// Its id in the partition.
    pub id: String,
    /// The stored envelope.
    pub raw: bytes::Bytes,
}

/// Sends stored entries in their order: one a request in single mode; in bulk mode up to
/// `max_batch` a request, as long as they take the same route. One outcome per entry,
/// `None` for one whose envelope cannot be read.
pub async fn send_stored(
    subscriber: &dyn Subscriber,
    entries: &[Stored],
    single: bool,
    max_batch: usize,
    replay: bool,
) -> Vec<Option<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; entries.len()];
    // Each entry presented, with where its outcome goes.
    let mut ready: Vec<Ready> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let Ok(view) = Envelope::view(&entry.raw) else {
            continue;
        };
        let presented = match subscriber.present(&entry.raw, &view) {
            Ok(Some(presented)) => presented,
            // Never sent elsewhere than its route (a 404 would drop it).
            Ok(None) => {
                outcomes[index] = Some(Outcome::Retry("no route of the app takes it".into()));
                continue;
            }
            Err(_) => continue,
        };
        let headers = single.then(|| Headers {
            event_id: view.event_id.clone(),
            topic: view.topic.clone(),
        });
        // An event sent again continues its trace, like any attempt.
        let traceparent = crate::model::trace::TraceContext::parse(&view.traceparent)
            .map_or_else(|| view.traceparent.clone(), |c| c.child().to_traceparent());
        let item = Item {
            partition: entry.key.as_str().into(),
            id: entry.id.clone(),
            body: presented.body,
            content_type: presented.content_type,
        };
        ready.push(Ready {
            index,
            item,
            route: presented.route,
            headers,
            traceparent,
        });
    }
    let max_batch = if single { 1 } else { max_batch.max(1) };
    let mut ready = ready.into_iter().peekable();
    while let Some(first) = ready.next() {
        let Ready {
            index,
            item,
            route,
            headers,
            traceparent,
        } = first;
        let mut indexes = vec![index];
        let mut items = vec![item];
        while items.len() < max_batch {
            let Some(next) = ready.next_if(|next| next.route == route) else {
                break;
            };
            indexes.push(next.index);
            items.push(next.item);
        }
        if subscriber.paused_until().is_some() {
            for index in indexes {
                outcomes[index] = Some(Outcome::Retry("the app is unhealthy".into()));
            }
            continue;
        }
        let Ok(endpoint) = subscriber.pick() else {
            for index in indexes {
                outcomes[index] = Some(Outcome::Retry("every endpoint is unhealthy".into()));
            }
            continue;
        };
        let traceparent = if items.len() == 1 {
            traceparent
        } else {
            crate::model::trace::new_traceparent()
        };
        let request = Request {
            items,
            route,
            headers,
            attempt: 1,
            traceparent: Some(traceparent),
            replay,
        };
        let reply = subscriber.send(endpoint, request).await;
        let mut answered = reply.outcomes.into_iter();
        for index in indexes {
            let outcome = answered
                .next()
                .unwrap_or_else(|| Outcome::Retry("no outcome in the answer".into()));
            outcomes[index] = Some(outcome);
        }
    }
    outcomes
}

/// Sends `entries` as [`send_stored`] does, trying the ones the subscriber asks again for
/// up to `tries` times in all (200 ms, then 400 ms, … between); returns how many were
/// taken (delivered, dropped by the subscriber, or unreadable) and how many still failed.
pub async fn send_tried(
    subscriber: &dyn Subscriber,
    entries: Vec<Stored>,
    single: bool,
    tries: u32,
) -> (u64, u64) {
    let batch = entries.len();
    let (mut left, mut taken) = (entries, 0);
    for attempt in 0..tries {
        if left.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200 << (attempt - 1))).await;
        }
        let outcomes = send_stored(subscriber, &left, single, batch, true).await;
        let mut again = Vec::new();
        for (entry, outcome) in left.into_iter().zip(outcomes) {
            match outcome {
                Some(Outcome::Retry(_)) => again.push(entry),
                Some(Outcome::Delivered | Outcome::Drop(_)) | None => taken += 1,
            }
        }
        left = again;
    }
    (taken, left.len() as u64)
}
