//! Data subjects over HTTP (admin only): `GET /v1/subjects/{subject}/export` streams every
//! event about a subject as JSON Lines; `POST /v1/subjects/{subject}/erase` erases every
//! copy of them and says how many were touched. The audit trail records who and when and
//! how many, never the subject.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::events::store_of;
use super::AppState;
use crate::auth::Principal;
use crate::eventstore::subjects;
use crate::ingress::error::ApiError;
use crate::model::audit::AuditEntry;
use crate::model::clock::now_ms;

/// Every event about `subject`, as JSON Lines, streamed as found.
pub async fn export(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    principal.must_be_admin("exporting a data subject's events")?;
    let store = store_of(&app)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let delivery = app.delivery.clone();
    tokio::spawn(async move {
        if let Err(err) = subjects::export(&store, &delivery, store.subjects(), &subject, tx).await
        {
            tracing::warn!(error = %err, "subject export ended early");
        }
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(format!("{line}\n")), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Erases every copy of the events about `subject`.
pub async fn erase(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    principal.must_be_admin("erasing a data subject's events")?;
    let store = store_of(&app)?;
    let erased = subjects::erase(&store, &app.delivery, store.subjects(), &subject)
        .await
        // What was erased stays erased; calling again finishes the rest.
        .map_err(super::events::unavailable)?;
    let entry = AuditEntry {
        id: String::new(),
        at_ms: now_ms(),
        principal: principal.name.clone(),
        action: "ERASE data subject".into(),
        target: format!(
            "{} event store rows redacted, {} stream and {} DLQ entries deleted, {} remaining",
            erased.event_store, erased.streams, erased.dlqs, erased.remaining
        ),
        address: String::new(),
        status: 200,
        ..AuditEntry::default()
    };
    if let Err(err) = app.audit.append(&entry).await {
        tracing::warn!(error = %err, "erasure audit entry not written");
    }
    Ok(Json(erased).into_response())
}
