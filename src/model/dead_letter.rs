//! Dead letters: why an event left delivery (stored with it in the DLQ), a DLQ entry as the
//! API lists it, and an exhausted event on its way to a Dapr `deadLetterTopic`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

/// Why and how an event failed, stored with it in the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `max_attempts_exceeded`, `dropped`, …
    pub reason: String,
    /// The last HTTP status, if any.
    pub last_status: Option<u16>,
    /// The last error text, if any.
    pub last_error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// First attempt, ms since the epoch.
    pub first_attempt_ms: u64,
    /// Last attempt, ms since the epoch.
    pub last_attempt_ms: u64,
}

/// One dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// Cursor of this entry (use it in `after` and in replay `ids`).
    pub id: String,
    /// The partition the event was read from.
    pub partition: String,
    /// Its id in that partition.
    pub source_id: String,
    /// `event_id`.
    pub event_id: String,
    /// Topic.
    pub topic: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last HTTP status, if any.
    pub last_status: Option<u16>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// First and last attempt, ms since the epoch.
    pub first_attempt_ms: u64,
    /// Last attempt, ms since the epoch.
    pub last_attempt_ms: u64,
    /// The event as published.
    pub event: Box<serde_json::value::RawValue>,
}

/// The service of the events evrouter publishes to dead-letter topics.
pub const FORWARDER_SERVICE: &str = "evrouter.dead-letter";

/// An event that exhausted its attempts, to be published to a Dapr app's
/// `deadLetterTopic` (besides the DLQ).
///
/// An event reaches a dead-letter topic once: what evrouter publishes there carries
/// [`FORWARDER_SERVICE`] as its service, and such an event that exhausts its attempts again
/// stays in its DLQ, so that subscriptions dead-lettering into each other's topics cannot
/// make a loop.
#[derive(Debug)]
pub struct Forward {
    /// The app whose subscription it is (whose principal publishes it).
    pub app_id: String,
    /// The pubsub name of the subscription.
    pub pubsub: String,
    /// The dead-letter topic.
    pub topic: String,
    /// What was sent to the app (the CloudEvent, or the raw payload).
    pub body: Bytes,
    /// Its content type.
    pub content_type: Arc<str>,
}
