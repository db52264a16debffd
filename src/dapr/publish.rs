//! The Dapr publish API: `POST|PUT /v1.0/publish/{pubsubname}/{topic}` and bulk publish,
//! answered with Dapr's status codes and error bodies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::cloudevent::{self, CloudEventError, Overrides, PublishMeta};
use super::error::DaprError;
use super::DaprApi;
use crate::event::{json_depth, Envelope, PayloadFormat};
use crate::ingress::publish::read_body;
use crate::ingress::AppState;

/// Longest time to live accepted: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The `metadata.*` query parameters (and bulk entries' metadata) evrouter reads.
#[derive(Debug, Default, Clone)]
struct Metadata {
    raw_payload: bool,
    ttl_seconds: Option<u64>,
    partition_key: Option<String>,
    overrides: Overrides,
}

impl Metadata {
    /// Reads `metadata.name=value` pairs; `strip` is the prefix to remove (`metadata.`
    /// in a query, nothing in a bulk entry's metadata object).
    fn read<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
        strip: &str,
        into: &mut Metadata,
    ) -> Result<(), DaprError> {
        for (name, value) in pairs {
            let Some(name) = name.strip_prefix(strip) else {
                continue;
            };
            // Some SDKs send values JSON-encoded (`"true"` with its quotes).
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let text = || Some(value.to_string());
            match name {
                "rawPayload" => {
                    into.raw_payload = super::truthy(value).ok_or_else(|| {
                        DaprError::bad_metadata(format!(
                            "metadata.rawPayload must be true or false, not `{value}`"
                        ))
                    })?;
                }
                "ttlInSeconds" => {
                    let ttl = value
                        .parse::<u64>()
                        .ok()
                        .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl))
                        .ok_or_else(|| {
                            DaprError::bad_metadata(format!(
                                "metadata.ttlInSeconds must be a whole number of seconds from 1 \
                                 to {MAX_TTL_SECONDS}, not `{value}`"
                            ))
                        })?;
                    into.ttl_seconds = Some(ttl);
                }
                "partitionKey" => into.partition_key = text(),
                "cloudevent.id" => into.overrides.id = text(),
                "cloudevent.source" => into.overrides.source = text(),
                "cloudevent.type" => into.overrides.event_type = text(),
                "cloudevent.traceid" => into.overrides.traceid = text(),
                "cloudevent.traceparent" => into.overrides.traceparent = text(),
                "cloudevent.tracestate" => into.overrides.tracestate = text(),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The `metadata.*` pairs of a query string, percent-decoded.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .filter(|(k, _)| k.starts_with("metadata."))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What every publish request starts with: the evrouter topic, the query's
/// `metadata.*` and the body.
async fn read_request(
    app: &AppState,
    pubsub: &str,
    topic: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Metadata, bytes::Bytes), DaprError> {
    let target = app.dapr.target(pubsub, topic)?;
    let mut metadata = Metadata::default();
    let pairs = query_pairs(query.as_deref());
    Metadata::read(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        "metadata.",
        &mut metadata,
    )?;
    let bytes = read_body(headers, body, app.max_body_bytes, app.body_read_timeout)
        .await
        .map_err(DaprError::from_api)?;
    Ok((target, metadata, bytes))
}

/// Publishes one event through the Dapr API.
pub async fn publish(
    State(app): State<Arc<AppState>>,
    Path((pubsub, topic)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DaprError> {
    let api = &app.dapr;
    let (target, metadata, bytes) =
        read_request(&app, &pubsub, &topic, query, &headers, body).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(cloudevent::essence)
        .unwrap_or_default();
    let envelope = api.envelope(
        &pubsub,
        &topic,
        &bytes,
        &content_type,
        &metadata,
        &headers,
        app.publisher.limits().max_depth,
    )?;
    app.publisher
        .publish_envelopes(&target, vec![envelope])
        .await
        .map_err(DaprError::from_publish)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One entry of a bulk publish, as the Dapr SDKs send it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkEntry {
    /// `entryId` (Dapr's docs) or `entryID` (the JavaScript SDK).
    #[serde(alias = "entryID")]
    entry_id: Option<String>,
    event: Option<Box<serde_json::value::RawValue>>,
    content_type: Option<String>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// Publishes many events through the Dapr API: 204 when all are stored, else 500 with
/// the entries that were not.
pub async fn publish_bulk(
    State(app): State<Arc<AppState>>,
    Path((pubsub, topic)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DaprError> {
    let api = &app.dapr;
    let (target, shared, bytes) =
        read_request(&app, &pubsub, &topic, query, &headers, body).await?;
    let max_depth = app.publisher.limits().max_depth;
    if json_depth(&bytes, max_depth + 2) > max_depth + 2 {
        return Err(DaprError::bad_bulk(format!(
            "the body nests deeper than {max_depth} levels"
        )));
    }
    let entries: Vec<BulkEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| DaprError::bad_bulk(format!("the body is not a list of entries: {e}")))?;
    if entries.len() > app.publisher.limits().max_batch {
        return Err(DaprError::bad_bulk(format!(
            "{} entries exceed the limit of {}",
            entries.len(),
            app.publisher.limits().max_batch
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut envelopes = Vec::with_capacity(entries.len());
    let mut stored_ids = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let Some(entry_id) = entry.entry_id.filter(|id| !id.is_empty()) else {
            return Err(DaprError::bad_bulk(format!("entry {i} has no entryId")));
        };
        if !seen.insert(entry_id.clone()) {
            return Err(DaprError::bad_bulk(format!(
                "entryId `{entry_id}` is used twice"
            )));
        }
        let mut metadata = shared.clone();
        if let Err(err) = Metadata::read(
            entry.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "",
            &mut metadata,
        ) {
            failed.push((entry_id, err.message));
            continue;
        }
        let content_type = entry
            .content_type
            .as_deref()
            .map(cloudevent::essence)
            .unwrap_or_else(|| "application/json".into());
        // The event stays the JSON text it was sent as; a string of a non-JSON type is
        // its content.
        let raw = entry.event.as_deref().map_or("null", |e| e.get());
        let text = (!cloudevent::is_json(&content_type))
            .then(|| serde_json::from_str::<String>(raw).ok())
            .flatten();
        let body = match text {
            // Bytes travel base64-encoded in a bulk body, as Dapr's SDKs send them.
            Some(text) if content_type == "application/octet-stream" => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .unwrap_or_else(|_| text.into_bytes())
            }
            Some(text) => text.into_bytes(),
            None => raw.as_bytes().to_vec(),
        };
        match api.envelope(
            &pubsub,
            &topic,
            &body,
            &content_type,
            &metadata,
            &headers,
            max_depth,
        ) {
            Ok(envelope) => {
                envelopes.push(envelope);
                stored_ids.push(entry_id);
            }
            Err(err) => failed.push((entry_id, err.message)),
        }
    }
    if let Err(err) = app.publisher.publish_envelopes(&target, envelopes).await {
        let why = DaprError::from_publish(err).message;
        failed.extend(stored_ids.into_iter().map(|id| (id, why.clone())));
    }
    if failed.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let failed_entries: Vec<Value> = failed
        .into_iter()
        // Both spellings: Dapr's `entryId` and the JavaScript SDK's `entryID`.
        .map(|(id, error)| serde_json::json!({ "entryId": id, "entryID": id, "error": error }))
        .collect();
    Ok((
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({
            "failedEntries": failed_entries,
            "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
        })),
    )
        .into_response())
}

/// 404 for a publish path without a topic.
pub async fn empty_topic(Path(pubsub): Path<String>) -> DaprError {
    DaprError::new(
        StatusCode::NOT_FOUND,
        "ERR_TOPIC_NAME_EMPTY",
        format!("topic is empty in pubsub {pubsub}"),
    )
}

impl DaprApi {
    /// Builds the stored envelope of one published body.
    #[allow(clippy::too_many_arguments)]
    fn envelope(
        &self,
        pubsub: &str,
        topic: &str,
        body: &[u8],
        content_type: &str,
        metadata: &Metadata,
        headers: &HeaderMap,
        max_depth: usize,
    ) -> Result<Envelope, DaprError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let received_us = cloudevent::now_us();
        let expires_us = metadata
            .ttl_seconds
            .map(|ttl| received_us.saturating_add(ttl.saturating_mul(1_000_000)));
        if (cloudevent::is_json(content_type) || content_type == cloudevent::CLOUDEVENTS_JSON)
            && json_depth(body, max_depth) > max_depth
        {
            return Err(DaprError::bad_cloudevent(format!(
                "the body nests deeper than {max_depth} levels"
            )));
        }
        let traceparent = header("traceparent")
            .filter(|t| crate::trace::is_valid_traceparent(t))
            .unwrap_or_else(crate::trace::new_traceparent);
        if metadata.raw_payload {
            let event_id = metadata
                .overrides
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            return Ok(Envelope {
                key: metadata
                    .partition_key
                    .clone()
                    .unwrap_or_else(|| event_id.clone()),
                event_id,
                topic: self.target(pubsub, topic)?,
                event_type: String::new(),
                sequence: None,
                received_us,
                service: header("dapr-app-id").unwrap_or_default(),
                correlation_id: String::new(),
                traceparent,
                tracestate: header("tracestate"),
                payload: body.to_vec(),
                format: PayloadFormat::Raw,
                content_type: (!content_type.is_empty()).then(|| content_type.to_string()),
                expires_us,
            });
        }
        let meta = PublishMeta {
            content_type: content_type.to_string(),
            pubsubname: pubsub.to_string(),
            topic: topic.to_string(),
            source: header("dapr-app-id").unwrap_or_else(|| "evrouter".into()),
            overrides: metadata.overrides.clone(),
            traceparent: Some(traceparent),
            tracestate: header("tracestate"),
            expires_us,
        };
        let event = cloudevent::build_parts(body, &meta).map_err(|e| match e {
            CloudEventError::NotAnObject(_)
            | CloudEventError::NotAString(_)
            | CloudEventError::SpecVersion(_) => DaprError::bad_cloudevent(e.to_string()),
        })?;
        let text = |name: &str| {
            event
                .attrs
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let event_id = text("id");
        Ok(Envelope {
            key: metadata
                .partition_key
                .clone()
                .unwrap_or_else(|| event_id.clone()),
            topic: self.target(pubsub, topic)?,
            event_type: text("type"),
            sequence: None,
            received_us,
            service: text("source"),
            correlation_id: String::new(),
            traceparent: text("traceparent"),
            tracestate: Some(text("tracestate")).filter(|t| !t.is_empty()),
            payload: event.to_vec(),
            format: PayloadFormat::CloudEvent,
            content_type: None,
            expires_us,
            event_id,
        })
    }
}

/// Publishes the events Dapr subscriptions hand over for their `deadLetterTopic`, so that
/// the topic's subscribers get them; a failed publish is tried again a few times (the
/// event is in the subscription's DLQ in any case).
pub fn spawn_dead_letter_publisher(
    api: Arc<DaprApi>,
    publisher: Arc<crate::publish::Publisher>,
    mut letters: tokio::sync::mpsc::Receiver<super::deliver::DeadLetter>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(letter) = letters.recv().await {
            let structured = &*letter.content_type == cloudevent::CLOUDEVENTS_JSON;
            let metadata = Metadata {
                raw_payload: !structured,
                ..Metadata::default()
            };
            let content_type = letter.content_type.to_string();
            let built = api
                .target(&letter.pubsub, &letter.topic)
                .and_then(|target| {
                    let envelope = api.envelope(
                        &letter.pubsub,
                        &letter.topic,
                        &letter.body,
                        &content_type,
                        &metadata,
                        &HeaderMap::new(),
                        publisher.limits().max_depth,
                    )?;
                    Ok((target, envelope))
                });
            let (target, envelope) = match built {
                Ok(built) => built,
                Err(err) => {
                    tracing::warn!(topic = %letter.topic, error = %err.message, "dead-letter topic refused the event");
                    continue;
                }
            };
            for attempt in 1..=5u32 {
                match publisher
                    .publish_envelopes(&target, vec![envelope.clone()])
                    .await
                {
                    Ok(_) => break,
                    // Only a store that is unavailable can change its mind.
                    Err(err)
                        if attempt == 5
                            || !matches!(err, crate::publish::PublishError::Unavailable(_)) =>
                    {
                        tracing::warn!(topic = %letter.topic, error = %err, "event not published to its dead-letter topic; it stays in the DLQ");
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(
                            200 * u64::from(attempt),
                        ))
                        .await
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_metadata_is_decoded() {
        let pairs = query_pairs(Some(
            "metadata.rawPayload=true&metadata.ttlInSeconds=30&metadata.partitionKey=a%2Fb&other=1&metadata.cloudevent.type=my+type",
        ));
        let mut m = Metadata::default();
        Metadata::read(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "metadata.",
            &mut m,
        )
        .expect("metadata");
        assert!(m.raw_payload);
        assert_eq!(m.ttl_seconds, Some(30));
        assert_eq!(m.partition_key.as_deref(), Some("a/b"));
        assert_eq!(m.overrides.event_type.as_deref(), Some("my type"));
        let bad = query_pairs(Some("metadata.ttlInSeconds=soon"));
        assert!(Metadata::read(
            bad.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "metadata.",
            &mut Metadata::default()
        )
        .is_err());
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b%zz%2"), "a b%zz%2");
    }
}
