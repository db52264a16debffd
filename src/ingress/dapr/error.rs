//! Dapr's error body, `{"errorCode":"ERR_…","message":"…"}`, which the Dapr SDKs read.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::quota::Limited;
use crate::ingress::error::ApiError;
use crate::publish::dapr::DaprRefusal;
use crate::publish::PublishError;

/// An error answer of the Dapr API.
#[derive(Debug)]
pub struct DaprError {
    /// HTTP status.
    pub status: StatusCode,
    /// Dapr's error code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Seconds to put in `Retry-After`.
    pub retry_after: Option<u32>,
}

impl DaprError {
    /// An error with Dapr's `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the body could not be made a CloudEvent.
    pub fn bad_cloudevent(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            message,
        )
    }

    /// 400: a `metadata.*` value is wrong.
    pub fn bad_metadata(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_REQUEST_METADATA",
            message,
        )
    }

    /// 400: a bulk publish body is not a list of entries.
    pub fn bad_bulk(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ERR_PUBSUB_EVENTS_SER", message)
    }

    /// The body could not be read (too large, too slow, broken): its status is kept.
    pub fn from_api(err: ApiError) -> Self {
        Self::new(err.status, "ERR_PUBSUB_REQUEST_BODY", err.message)
    }

    /// A publish the store did not take.
    pub fn from_publish(err: PublishError) -> Self {
        let message = err.to_string();
        match err {
            PublishError::InvalidTopic(_) => {
                Self::new(StatusCode::BAD_REQUEST, "ERR_PUBSUB_TOPIC_INVALID", message)
            }
            PublishError::Unavailable(_) | PublishError::NoStream(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_PUBSUB_PUBLISH_MESSAGE",
                message,
            ),
            _ => Self::new(StatusCode::BAD_REQUEST, "ERR_PUBSUB_EVENTS_SER", message),
        }
    }
}

impl From<Limited> for DaprError {
    fn from(limited: Limited) -> Self {
        let api = ApiError::rate_limited(limited);
        Self {
            retry_after: api.retry_after,
            ..Self::new(api.status, "ERR_PUBSUB_PUBLISH_MESSAGE", api.message)
        }
    }
}

impl From<DaprRefusal> for DaprError {
    fn from(refusal: DaprRefusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            DaprRefusal::PubsubNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "ERR_PUBSUB_NOT_FOUND", message)
            }
            DaprRefusal::TopicEmpty(_) => {
                Self::new(StatusCode::NOT_FOUND, "ERR_TOPIC_NAME_EMPTY", message)
            }
            DaprRefusal::TopicForbidden { .. } => {
                Self::new(StatusCode::FORBIDDEN, "ERR_PUBSUB_FORBIDDEN", message)
            }
            DaprRefusal::TopicInvalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, "ERR_PUBSUB_TOPIC_INVALID", message)
            }
            DaprRefusal::BadCloudEvent(_) => Self::bad_cloudevent(message),
            DaprRefusal::BadMetadata(_) => Self::bad_metadata(message),
            DaprRefusal::InvalidEvent(_) => Self::bad_cloudevent(message),
        }
    }
}

impl IntoResponse for DaprError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({
                "errorCode": self.code,
                "message": self.message,
            })),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}
