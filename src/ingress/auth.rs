//! Authentication of every request: the bearer token (or, on the Dapr API, Dapr's
//! `dapr-api-token` header) becomes a `Principal` in the request's extensions, or the
//! request is answered 401. Health checks and the `/ui` files stay open, and stats when
//! configured so. Every change to subscriptions, DLQs and Dapr apps is recorded in the
//! audit log, and every refused request (401, 403) is counted there (see [`refusals`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::{audit, refusals, AppState, ClientCert};
use crate::auth::AuthError;

/// Paths every caller may use.
fn open(path: &str, app: &AppState) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/v1.0/healthz" | "/v1.0/healthz/outbound"
    ) || super::ui::assets::is_file(path)
        || (matches!(path, "/v1/stats" | "/metrics" | "/v1/dashboard") && app.auth.open_metrics())
}

/// The token of a request: `Authorization: Bearer …`, or `dapr-api-token` on the Dapr API.
fn token<'a>(headers: &'a HeaderMap, path: &str) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    bearer.or_else(|| {
        path.starts_with("/v1.0")
            .then(|| headers.get("dapr-api-token").and_then(|v| v.to_str().ok()))
            .flatten()
    })
}

/// Puts the caller's principal in the request, or answers 401.
pub async fn authenticate(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    if open(&path, &app) {
        return next.run(request).await;
    }
    let call = audit::Call::of(&request);
    let found = match token(request.headers(), &path) {
        // Without a token, a verified client certificate may name the principal.
        None if app.auth.required() => request
            .extensions()
            .get::<ClientCert>()
            .and_then(|cert| app.auth.authenticate_certificate(&cert.0))
            .ok_or(AuthError::Missing),
        bearer => app.auth.authenticate(bearer),
    };
    match found {
        Ok(principal) => {
            let name = principal.name.clone();
            request.extensions_mut().insert(principal);
            let response = next.run(request).await;
            let status = response.status();
            if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
                refusals::refused(&app, call.refused(Some(&name), status.as_u16()), "http").await;
            } else if call.changes() {
                audit::record(&app, &call, &name, status.as_u16()).await;
            }
            response
        }
        Err(why) => {
            tracing::debug!(path, reason = %why, "request refused: no principal");
            let status = StatusCode::UNAUTHORIZED.as_u16();
            refusals::refused(&app, call.refused(None, status), "http").await;
            ApiError::unauthorized(why)
        }
    }
}
