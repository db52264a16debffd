//! The Dapr publish API: `POST|PUT /v1.0/publish/{pubsubname}/{topic}` and bulk publish,
//! answered with Dapr's status codes and error bodies.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use foldhash::fast::RandomState;
use serde_json::Value;

use super::error::DaprError;
use crate::auth::Principal;
use crate::ingress::codes::DaprCode;
use crate::ingress::publish::read_body;
use crate::ingress::AppState;
use crate::model::cloudevent::{self, Body as Published};
use crate::publish::dapr::bulk::parse_bulk;
use crate::publish::dapr::{bulk_entry_body, Caller, Depth, Metadata, Route};

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
    principal: &Principal,
    pubsub: &str,
    topic: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Metadata, bytes::Bytes), DaprError> {
    let target = app.dapr.target(pubsub, topic)?;
    principal
        .may_publish(&target)
        .map_err(|denied| DaprError::new(DaprCode::PubsubForbidden, denied.0))?;
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
    Extension(principal): Extension<Arc<Principal>>,
    Path((pubsub, topic)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DaprError> {
    let started = std::time::Instant::now();
    let answer = publish_one(&app, &principal, pubsub, topic, query, headers, body).await;
    counted(&app, started, answer)
}

/// Counts a Dapr publish in the metrics (the events stored, or the refusal) and gives its
/// answer.
fn counted(
    app: &AppState,
    started: std::time::Instant,
    answer: Result<(String, usize, Response), DaprError>,
) -> Result<Response, DaprError> {
    match &answer {
        Ok((target, stored, _)) => app.metrics.published("dapr", target, started, *stored),
        Err(err) => app.metrics.rejected("dapr", err.code.as_str()),
    }
    answer.map(|(_, _, response)| response)
}

/// Checks and stores one event of the Dapr API: the evrouter topic, 1, and the answer.
async fn publish_one(
    app: &Arc<AppState>,
    principal: &Arc<Principal>,
    pubsub: String,
    topic: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(String, usize, Response), DaprError> {
    let api = &app.dapr;
    let (target, metadata, bytes) =
        read_request(app, principal, &pubsub, &topic, query, &headers, body).await?;
    principal.quota.admit(&principal.name, 1, bytes.len())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(cloudevent::essence)
        .unwrap_or_default();
    let route = Route {
        pubsub: &pubsub,
        topic: &topic,
        target: &target,
    };
    let envelope = api.envelope(
        route,
        Published::Bytes(&bytes),
        &content_type,
        &metadata,
        &caller(&headers),
        Depth::Limit(app.publisher.limits().max_depth),
    )?;
    app.publisher
        .publish_envelopes(&target, vec![envelope])
        .await
        .map_err(DaprError::from_publish)?;
    Ok((target, 1, StatusCode::NO_CONTENT.into_response()))
}

/// Publishes many events through the Dapr API: 204 when all are stored, else 500 with
/// the entries that were not.
pub async fn publish_bulk(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((pubsub, topic)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DaprError> {
    let started = std::time::Instant::now();
    let answer = publish_many(&app, &principal, pubsub, topic, query, headers, body).await;
    counted(&app, started, answer)
}

/// Checks and stores a Dapr bulk publish: the evrouter topic, how many entries were
/// stored, and the answer.
async fn publish_many(
    app: &Arc<AppState>,
    principal: &Arc<Principal>,
    pubsub: String,
    topic: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(String, usize, Response), DaprError> {
    let api = &app.dapr;
    let (target, shared, bytes) =
        read_request(app, principal, &pubsub, &topic, query, &headers, body).await?;
    let max_depth = app.publisher.limits().max_depth;
    let caller = caller(&headers);
    let entries = parse_bulk(&bytes, max_depth).map_err(|e| DaprError::bad_bulk(e.to_string()))?;
    principal
        .quota
        .admit(&principal.name, entries.len(), bytes.len())?;
    if entries.len() > app.publisher.limits().max_batch {
        return Err(DaprError::bad_bulk(format!(
            "{} entries exceed the limit of {}",
            entries.len(),
            app.publisher.limits().max_batch
        )));
    }
    let route = Route {
        pubsub: &pubsub,
        topic: &topic,
        target: &target,
    };
    let mut seen = HashSet::with_capacity_and_hasher(entries.len(), RandomState::default());
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
            entry.metadata.iter().map(|(k, v)| (&**k, &**v)),
            "",
            &mut metadata,
        ) {
            failed.push((entry_id.into_owned(), err.to_string()));
            continue;
        }
        let content_type = entry
            .content_type
            .as_deref()
            .map(cloudevent::essence)
            .unwrap_or_else(|| "application/json".into());
        // The event stays the JSON text it was sent as, read once with the whole body.
        let decoded;
        let body = match entry.event {
            Some(raw) if cloudevent::is_json(&content_type) => Published::Json(raw),
            event => {
                decoded = bulk_entry_body(event.map_or("null", |e| e.get()), &content_type);
                Published::Bytes(&decoded)
            }
        };
        // The whole body's nesting was measured above: no entry nests deeper.
        match api.envelope(
            route,
            body,
            &content_type,
            &metadata,
            &caller,
            Depth::Checked,
        ) {
            Ok(traced) => {
                envelopes.push(traced);
                stored_ids.push(entry_id);
            }
            Err(err) => failed.push((entry_id.into_owned(), err.to_string())),
        }
    }
    let mut stored = stored_ids.len();
    if let Err(err) = app.publisher.publish_envelopes(&target, envelopes).await {
        let why = DaprError::from_publish(err).message;
        stored = 0;
        failed.extend(
            stored_ids
                .into_iter()
                .map(|id| (id.into_owned(), why.clone())),
        );
    }
    if failed.is_empty() {
        return Ok((target, stored, StatusCode::NO_CONTENT.into_response()));
    }
    let failed_entries: Vec<Value> = failed
        .into_iter()
        // Both spellings: Dapr's `entryId` and the JavaScript SDK's `entryID`.
        .map(|(id, error)| serde_json::json!({ "entryId": id, "entryID": id, "error": error }))
        .collect();
    let response = (
        DaprCode::PublishMessage.status(),
        axum::Json(serde_json::json!({
            "failedEntries": failed_entries,
            "errorCode": DaprCode::PublishMessage.as_str(),
        })),
    )
        .into_response();
    Ok((target, stored, response))
}

/// 404 for a publish path without a topic.
pub async fn empty_topic(Path(pubsub): Path<String>) -> DaprError {
    DaprError::new(
        DaprCode::TopicNameEmpty,
        format!("topic is empty in pubsub {pubsub}"),
    )
}

/// Who publishes, from the request's headers.
pub(super) fn caller(headers: &HeaderMap) -> Caller {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Caller {
        app_id: header("dapr-app-id"),
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    }
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
