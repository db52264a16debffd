//! Dapr's error body, `{"errorCode":"ERR_…","message":"…"}`, which the Dapr SDKs read.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::quota::Limited;
use crate::ingress::codes::DaprCode;
use crate::ingress::error::ApiError;
use crate::publish::dapr::DaprRefusal;
use crate::publish::PublishError;

/// An error answer of the Dapr API.
#[derive(Debug)]
pub struct DaprError {
    /// HTTP status.
    pub status: StatusCode,
    /// Dapr's error code (from the catalogue).
    pub code: DaprCode,
    /// What went wrong.
    pub message: String,
    /// Seconds to put in `Retry-After`.
    pub retry_after: Option<u32>,
}

impl DaprError {
    /// An error with Dapr's `code`, answered with its usual status.
    pub fn new(code: DaprCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the body could not be made a CloudEvent.
    pub fn bad_cloudevent(message: impl Into<String>) -> Self {
        Self::new(DaprCode::CloudEventsSer, message)
    }

    /// 400: a `metadata.*` value is wrong.
    pub fn bad_metadata(message: impl Into<String>) -> Self {
        Self::new(DaprCode::RequestMetadata, message)
    }

    /// 400: a bulk publish body is not a list of entries.
    pub fn bad_bulk(message: impl Into<String>) -> Self {
        Self::new(DaprCode::EventsSer, message)
    }

    /// The body could not be read (too large, too slow, broken): its status is kept.
    pub fn from_api(err: ApiError) -> Self {
        Self {
            status: err.status,
            ..Self::new(DaprCode::RequestBody, err.message)
        }
    }

    /// A publish the store did not take.
    pub fn from_publish(err: PublishError) -> Self {
        let message = err.to_string();
        match err {
            PublishError::InvalidTopic(_) => Self::new(DaprCode::TopicInvalid, message),
            PublishError::Unavailable(_) | PublishError::NoStream(_) => {
                Self::new(DaprCode::PublishMessage, message)
            }
            _ => Self::new(DaprCode::EventsSer, message),
        }
    }
}

impl From<Limited> for DaprError {
    fn from(limited: Limited) -> Self {
        let api = ApiError::rate_limited(limited);
        Self {
            retry_after: api.retry_after,
            status: api.status,
            ..Self::new(DaprCode::PublishMessage, api.message)
        }
    }
}

impl From<DaprRefusal> for DaprError {
    fn from(refusal: DaprRefusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            DaprRefusal::PubsubNotFound(_) => Self::new(DaprCode::PubsubNotFound, message),
            DaprRefusal::TopicEmpty(_) => Self::new(DaprCode::TopicNameEmpty, message),
            DaprRefusal::TopicForbidden { .. } => Self::new(DaprCode::PubsubForbidden, message),
            DaprRefusal::TopicInvalid(_) => Self::new(DaprCode::TopicInvalid, message),
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
                "errorCode": self.code.as_str(),
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
