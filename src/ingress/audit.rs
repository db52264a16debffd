//! `GET /v1/audit` (admin): the audit log, actions and refusals merged oldest first, from a
//! time (`since`, RFC 3339 or ms since the epoch) or after an entry (`after`), of one
//! principal when asked; and the recording of each audited action (refusals are counted
//! by [`super::refusals`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::codes::ErrorCode;
use super::error::ApiError;
use super::refusals::Refused;
use super::{AppState, ClientAddr};
use crate::auth::Principal;
use crate::model::audit::AuditEntry;
use crate::model::clock::now_ms;

/// The query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339 time or ms since the epoch; default: the beginning.
    since: Option<String>,
    /// An entry id: entries after it (the `next` of the previous page).
    after: Option<String>,
    /// Only this principal's entries.
    principal: Option<String>,
    /// Most entries (1 to 1000, default 100).
    limit: Option<usize>,
}

/// Appends one entry of an action; a failure is logged (the request has been answered
/// already).
pub(super) async fn record(app: &AppState, call: &Call, principal: &str, status: u16) {
    let entry = AuditEntry {
        at_ms: now_ms(),
        principal: principal.to_string(),
        action: call.action.clone(),
        target: call.target.clone(),
        address: call.address.clone(),
        status,
        ..AuditEntry::default()
    };
    super::refusals::write(app, &[entry]).await;
}

fn since_ms(text: &str) -> Option<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    Some(
        at.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64,
    )
}

/// `GET /v1/audit`.
pub async fn list(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.must_be_admin("reading the audit log")?;
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let since = match &query.since {
        Some(text) => since_ms(text).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("since: `{text}` is neither an RFC 3339 time nor ms since the epoch"),
            )
        })?,
        None => 0,
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app
        .audit
        .read(
            since,
            query.after.as_deref(),
            query.principal.as_deref(),
            limit,
        )
        .await
        .map_err(|e| ApiError::store_unavailable("audit read", e))?;
    let next = (entries.len() >= limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next": next })))
}

/// What the audit log records of a request.
pub(super) struct Call {
    /// `METHOD /path/{param}`: the method and the path template.
    pub action: String,
    /// The path as called.
    pub target: String,
    /// The caller's address.
    pub address: String,
    method: Method,
}

impl Call {
    /// The refusal of this call, of `principal` when the caller had one.
    pub(super) fn refused<'a>(&'a self, principal: Option<&'a str>, status: u16) -> Refused<'a> {
        Refused {
            principal,
            action: &self.action,
            target: &self.target,
            address: &self.address,
            status,
        }
    }

    pub(super) fn of(request: &Request) -> Self {
        let template = request.extensions().get::<MatchedPath>().map_or_else(
            || request.uri().path().to_string(),
            |m| m.as_str().to_string(),
        );
        // A data subject's id is personal data: such a call is recorded by its path template.
        let target = if template.starts_with("/v1/subjects/") {
            template.clone()
        } else {
            request.uri().path().to_string()
        };
        Self {
            action: format!("{} {template}", request.method()),
            target,
            address: request
                .extensions()
                .get::<ClientAddr>()
                .map(|a| a.0.to_string())
                .unwrap_or_default(),
            method: request.method().clone(),
        }
    }

    /// Whether it is audited: it changes subscriptions, dead letters or Dapr apps, or it
    /// reads the event store (who looked at which events).
    pub(super) fn changes(&self) -> bool {
        let changes = self.method != Method::GET
            && [
                "/v1/subscriptions",
                "/v1/dlq/",
                "/v1/dapr/apps/",
                "/v1/replay",
            ]
            .iter()
            .any(|prefix| self.target.starts_with(prefix));
        let reads_history = ["/v1/events", "/v1/traces/", "/v1/subjects/"]
            .iter()
            .any(|prefix| self.target.starts_with(prefix));
        changes || reads_history
    }
}
