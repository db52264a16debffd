//! `POST /v1/dapr/apps/{id}/refresh`: an app's subscriptions read now.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::auth::Principal;
use crate::ingress::codes::ErrorCode;
use crate::ingress::error::ApiError;
use crate::ingress::AppState;
use crate::webhook::dapr::apps::AppError;

/// `POST /v1/dapr/apps/{id}/refresh`: reads the app's subscriptions now.
pub async fn refresh(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = principal.must_be_admin("refreshing a Dapr app") {
        return ApiError::forbidden(denied).into_response();
    }
    let Some(config) = app.dapr_apps.app(&id).cloned() else {
        return ApiError::new(
            ErrorCode::UnknownApp,
            format!("no Dapr app `{id}` is configured"),
        )
        .into_response();
    };
    match app.dapr_apps.sync(&config).await {
        Ok(names) => {
            axum::Json(serde_json::json!({ "app": id, "subscriptions": names })).into_response()
        }
        Err(err) => {
            let mut error = ApiError::new(ErrorCode::AppNotRead, err.to_string());
            if let AppError::Store { .. } = err {
                // Redis failed, not the app.
                error.status = StatusCode::SERVICE_UNAVAILABLE;
            }
            error.into_response()
        }
    }
}
