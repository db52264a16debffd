//! The bodies a Dapr app is sent. For one stored event: the CloudEvent (or the raw payload), the
//! route its rules pick, and the content type; and the body of a bulk delivery.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::model::cloudevent::{self, Stored, CLOUDEVENTS_JSON};
use crate::model::envelope::{Envelope, PayloadFormat};
use crate::model::route::Routes;
use crate::model::subscription::DaprTarget;

/// One event made ready for a Dapr app.
#[derive(Debug)]
pub struct ForApp {
    /// The request body (a CloudEvent, or the payload as published).
    pub body: Bytes,
    /// The app's path.
    pub path: Arc<str>,
    /// The body's content type.
    pub content_type: Arc<str>,
}

/// Presents `envelope` to the app of `target`; `None` when no rule takes it and there is
/// no default path.
pub fn for_app(
    target: &DaprTarget,
    routes: Option<&Routes>,
    envelope: &Envelope,
) -> Option<ForApp> {
    let stored = stored_of(envelope);
    let needs_event = !target.raw_payload || routes.is_some_and(Routes::has_rules);
    let event =
        needs_event.then(|| cloudevent::present(&stored, &target.pubsubname, &target.topic));
    let path = match (routes, &event) {
        (Some(routes), Some(event)) => routes.path_for(event)?,
        (Some(routes), None) => routes.path_for(&Value::Null)?,
        (None, _) => target.default_path.as_deref()?,
    };
    let (body, content_type) = if target.raw_payload {
        let content_type = match envelope.format {
            PayloadFormat::Raw => envelope
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            PayloadFormat::CloudEvent => CLOUDEVENTS_JSON.into(),
            PayloadFormat::Event => "application/json".into(),
        };
        (Bytes::from(envelope.payload.clone()), content_type)
    } else {
        let event = event.unwrap_or(Value::Null);
        (
            Bytes::from(serde_json::to_vec(&event).unwrap_or_default()),
            CLOUDEVENTS_JSON.to_string(),
        )
    };
    Some(ForApp {
        body,
        path: Arc::from(path),
        content_type: Arc::from(content_type),
    })
}

/// The fields of `envelope` a CloudEvent is made from.
fn stored_of(envelope: &Envelope) -> Stored<'_> {
    Stored {
        format: envelope.format,
        payload: &envelope.payload,
        content_type: envelope.content_type.as_deref(),
        event_id: &envelope.event_id,
        event_type: &envelope.event_type,
        service: &envelope.service,
        traceparent: &envelope.traceparent,
        received_us: envelope.received_us,
    }
}

/// A raw Dapr payload as a webhook subscription receives it: wrapped in a CloudEvent (as a
/// data publish is), so that every webhook body is JSON.
pub fn for_webhook(envelope: &Envelope) -> Bytes {
    let stored = stored_of(envelope);
    let event = cloudevent::present(&stored, "", &envelope.topic);
    Bytes::from(serde_json::to_vec(&event).unwrap_or_default())
}

/// The body of a bulk delivery (`com.dapr.event.sent.bulk`): one entry per event, each
/// with its stream entry id as `entryId`.
pub fn bulk_body(target: &DaprTarget, entries: &[(&str, &Bytes, &str)]) -> Bytes {
    use base64::Engine;
    let entries: Vec<Value> = entries
        .iter()
        .map(|(entry_id, body, content_type)| {
            let event = if *content_type == CLOUDEVENTS_JSON {
                serde_json::from_slice(body).unwrap_or(Value::Null)
            } else {
                Value::String(base64::engine::general_purpose::STANDARD.encode(body))
            };
            let content_type = if *content_type == CLOUDEVENTS_JSON {
                CLOUDEVENTS_JSON
            } else {
                "application/octet-stream"
            };
            json!({
                "entryId": entry_id,
                "event": event,
                "contentType": content_type,
                "metadata": {},
            })
        })
        .collect();
    let body = json!({
        "id": crate::model::new_event_id(),
        "type": "com.dapr.event.sent.bulk",
        "topic": target.topic,
        "pubsubname": target.pubsubname,
        "metadata": {},
        "entries": entries,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The per-entry statuses of a bulk answer, `{"statuses":[{"entryId","status"}]}`.
pub fn bulk_statuses(body: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let statuses = value.get("statuses")?.as_array()?;
    Some(
        statuses
            .iter()
            .filter_map(|s| {
                Some((
                    s.get("entryId")?.as_str()?.to_string(),
                    s.get("status")?.as_str()?.to_ascii_uppercase(),
                ))
            })
            .collect(),
    )
}
