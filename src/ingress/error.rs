//! The one error shape of the HTTP API: a status, a stable code, a message and the paths
//! at fault.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::codes::ErrorCode;
use crate::auth::quota::Limited;
use crate::auth::{AuthError, Denied};
use crate::publish::{EventViolation, PublishError};
use crate::store::StoreError;

/// An error answer: `{"error":{"code","message","details":[{"path","message"}]}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status: the code's, unless the handler says otherwise.
    pub status: StatusCode,
    /// Stable machine-readable code (from the catalogue).
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Paths at fault.
    pub details: Vec<EventViolation>,
    /// Seconds to put in `Retry-After`.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [EventViolation],
}

impl ApiError {
    /// Reads a JSON request body into `T`; when it cannot, `400 code` with `message` and
    /// the JSON pointer of what was wrong (`/target`, `/filter/keys/0`) in `details`.
    pub fn json_body<T: serde::de::DeserializeOwned>(
        bytes: &[u8],
        code: ErrorCode,
        message: &str,
    ) -> Result<T, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let pointer = if path == "." {
                String::new()
            } else {
                format!("/{}", path.replace(['.', '['], "/").replace(']', ""))
            };
            ApiError {
                details: vec![EventViolation {
                    index: None,
                    path: pointer,
                    message: e.inner().to_string(),
                }],
                ..ApiError::new(code, message.to_string())
            }
        })
    }

    /// An error with no details, answered with its code's status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// 404 for a subscription name that does not exist.
    pub fn unknown_subscription(name: &str) -> Self {
        Self::new(
            ErrorCode::UnknownSubscription,
            format!("no subscription named `{name}`"),
        )
    }

    /// 503 when Redis failed an admin operation (`what` goes to the log).
    pub fn store_unavailable(what: &str, err: redis::RedisError) -> Self {
        tracing::warn!(error = %err, "{what} failed");
        Self {
            retry_after: Some(1),
            ..Self::new(ErrorCode::StoreUnavailable, "redis is unavailable")
        }
    }

    /// 401: no principal; answered with `WWW-Authenticate`.
    pub fn unauthorized(why: AuthError) -> Response {
        let code = match why {
            AuthError::Missing => ErrorCode::Unauthenticated,
            AuthError::Invalid => ErrorCode::InvalidToken,
        };
        let mut response = Self::new(code, why.to_string()).into_response();
        let challenge = match why {
            AuthError::Missing => "Bearer realm=\"evrouter\"",
            AuthError::Invalid => "Bearer realm=\"evrouter\", error=\"invalid_token\"",
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }

    /// 403: the principal may not do this; the message names what refused it.
    pub fn forbidden(denied: Denied) -> Self {
        Self::new(ErrorCode::Forbidden, denied.0)
    }

    /// 429: over a quota; `Retry-After` says when to come back (413 when the request can
    /// never fit).
    pub fn rate_limited(limited: Limited) -> Self {
        match limited.retry_after {
            Some(wait) => Self {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u32),
                ..Self::new(ErrorCode::RateLimited, limited.message)
            },
            None => Self::new(ErrorCode::OverQuota, limited.message),
        }
    }

    /// 404 for a path no route serves.
    pub fn not_found(path: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no route for {path}"))
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        Self::forbidden(denied)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code.as_str(),
                message: &self.message,
                details: &self.details,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<PublishError> for ApiError {
    fn from(err: PublishError) -> Self {
        let message = err.to_string();
        match err {
            PublishError::InvalidTopic(_) => Self::new(ErrorCode::InvalidTopic, message),
            PublishError::NotUtf8(_) => Self::new(ErrorCode::InvalidEncoding, message),
            PublishError::TooDeep(_) => Self::new(ErrorCode::TooDeep, message),
            PublishError::MalformedJson { .. } => Self::new(ErrorCode::MalformedJson, message),
            PublishError::EmptyBatch => Self::new(ErrorCode::EmptyBatch, message),
            PublishError::BatchTooLarge { .. } => Self::new(ErrorCode::BatchTooLarge, message),
            PublishError::Invalid(details) => Self {
                details,
                ..Self::new(ErrorCode::InvalidEvent, message)
            },
            PublishError::NoStream(_) => Self::new(ErrorCode::NoStream, message),
            PublishError::RateLimited(limited) => Self::rate_limited(limited),
            PublishError::Unavailable(StoreError::Refused(why)) => {
                tracing::error!(error = %why, "redis refused a write");
                Self::new(ErrorCode::StoreError, "the event store refused the write")
            }
            PublishError::Unavailable(StoreError::Full(why)) => {
                tracing::warn!(error = %why, "publish refused: redis is full");
                Self {
                    retry_after: Some(5),
                    ..Self::new(
                        ErrorCode::StoreFull,
                        "the event store is full; nothing of this request was stored; retry later",
                    )
                }
            }
            PublishError::Unavailable(store) => {
                if !matches!(store, StoreError::Busy) {
                    tracing::warn!(error = %store, "publish not confirmed by redis");
                }
                // The cause goes to the log; the client learns what to do.
                let (code, message) = match store {
                    StoreError::Busy => (
                        ErrorCode::Overloaded,
                        "evrouter is at capacity; retry later",
                    ),
                    StoreError::Closed => (
                        ErrorCode::ShuttingDown,
                        "evrouter is shutting down; retry on another instance",
                    ),
                    StoreError::Timeout => (
                        ErrorCode::StoreUnavailable,
                        "the event store did not confirm in time; retry later",
                    ),
                    _ => (
                        ErrorCode::StoreUnavailable,
                        "the event store is unavailable; retry later",
                    ),
                };
                Self {
                    retry_after: Some(1),
                    ..Self::new(code, message)
                }
            }
        }
    }
}
