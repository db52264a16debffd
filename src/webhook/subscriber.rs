//! A plain webhook: delivery's [`Subscriber`] for a subscription without a Dapr app. Events
//! are presented once when read (the stored JSON without a copy; a raw Dapr payload wrapped
//! in a CloudEvent, so that every webhook body is JSON) and sent one a request or as a JSON
//! array; an answer settles every event of its request alike.

use std::sync::Arc;

use bytes::Bytes;

use super::dapr::bodies::for_webhook;
use super::post::{settle_alike, unsent, Poster, JSON};
use crate::delivery::transport::{Forwarded, Presented, Request, Sending, Subscriber};
use crate::model::envelope::{EntryView, Envelope, EnvelopeError, PayloadFormat};
use crate::model::subscription::DeliveryMode;

/// One webhook subscription's subscriber.
pub struct Webhook {
    /// How its requests go out (always guarded, without a token).
    pub poster: Poster,
}

impl Subscriber for Webhook {
    fn present(&self, raw: &Bytes, view: &EntryView) -> Result<Option<Presented>, EnvelopeError> {
        let body = if view.format == PayloadFormat::Raw {
            // A raw Dapr payload, as a CloudEvent so that its body is JSON.
            for_webhook(&Envelope::decode(raw)?)
        } else {
            // The common case: the payload as stored, without another copy.
            raw.slice(view.payload.clone())
        };
        Ok(Some(Presented {
            body,
            route: None,
            content_type: None,
        }))
    }

    fn pick(&self) -> Result<usize, Option<std::time::Instant>> {
        self.poster.endpoints.pick().map(|(index, _)| index)
    }

    fn open_breakers(&self) -> Vec<bool> {
        self.poster.endpoints.open()
    }

    fn send(&self, endpoint: usize, request: Request) -> Sending {
        let n = request.items.len();
        let url = match self.poster.url(endpoint) {
            Ok(url) => url.clone(),
            Err(reason) => return unsent(reason, n),
        };
        let (body, content_type): (Bytes, Arc<str>) =
            match (self.poster.sub.spec.mode, request.items.first()) {
                (DeliveryMode::Bulk, _) => (
                    json_array(request.items.iter().map(|item| &item.body)),
                    Arc::from(JSON),
                ),
                (DeliveryMode::Single, Some(item)) => (
                    item.body.clone(),
                    item.content_type.clone().unwrap_or_else(|| Arc::from(JSON)),
                ),
                (DeliveryMode::Single, None) => (Bytes::new(), Arc::from(JSON)),
            };
        let answer = self.poster.post(endpoint, url, body, content_type, request);
        Box::pin(async move { settle_alike(answer.await, n) })
    }

    fn forward(&self, _raw: &Bytes, _body: &Bytes, _content_type: Option<&Arc<str>>) -> Forwarded {
        // Only a Dapr app's subscription has a dead-letter topic.
        Forwarded::NotAsked
    }
}

/// Joins JSON documents into one JSON array.
fn json_array<'a>(items: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let len = items.clone().map(|b| b.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_joins_documents() {
        let items = [
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        let joined = json_array(items.iter());
        let parsed: serde_json::Value = serde_json::from_slice(&joined).expect("json");
        assert_eq!(parsed, serde_json::json!([{"a":1},{"b":2}]));
        assert_eq!(&json_array([].iter())[..], b"[]");
    }
}
