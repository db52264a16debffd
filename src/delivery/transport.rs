//! What delivery needs from whoever calls subscribers, as a trait the webhook client
//! implements: present a stored event, pick an endpoint, send a request of events, and
//! forward an exhausted event. Delivery decides what is sent together and when; it never
//! knows how a subscriber is called.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::subscription::Subscription;
use crate::model::envelope::{EntryView, EnvelopeError};

/// The outcome of one event in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered; ack it.
    Delivered,
    /// Try again later.
    Retry(String),
    /// The subscriber does not want it; ack it without retrying.
    Drop(String),
}

/// A stored event made ready for its subscriber, once, when it is read.
#[derive(Debug)]
pub struct Presented {
    /// The body of the event as the subscriber gets it.
    pub body: Bytes,
    /// The subscriber's route for it (a Dapr app's path); events of one request share it.
    pub route: Option<Arc<str>>,
    /// The body's content type when not `application/json`.
    pub content_type: Option<Arc<str>>,
}

/// One event of a request.
#[derive(Debug)]
pub struct Item {
    /// The partition it was read from.
    pub partition: Arc<str>,
    /// Its entry id there.
    pub id: String,
    /// Its presented body.
    pub body: Bytes,
    /// Its content type when not `application/json`.
    pub content_type: Option<Arc<str>>,
}

/// What a single-event request says about its event besides the body.
#[derive(Debug)]
pub struct Headers {
    /// `event_id`.
    pub event_id: String,
    /// Topic.
    pub topic: String,
}

/// One request: one event (single mode) or several of different keys (bulk mode).
#[derive(Debug)]
pub struct Request {
    /// The events, in order.
    pub items: Vec<Item>,
    /// The route all of them take.
    pub route: Option<Arc<str>>,
    /// The event's headers, for a single-event request.
    pub headers: Option<Headers>,
    /// The highest attempt number among the events (1 = first).
    pub attempt: u32,
    /// The W3C trace context of this attempt's span, sent as `traceparent`: in single
    /// mode a child of the event's stored context; in bulk mode a span linked to each
    /// event's (when spans are recorded).
    pub traceparent: Option<String>,
    /// Sent again on request (a replay from the event store): the subscriber is told so
    /// (`evr-replay: true`).
    pub replay: bool,
}

/// How a request ended: the HTTP status if there was an answer, and one outcome per item.
#[derive(Debug)]
pub struct Reply {
    /// The answer's status; `None` when there was no answer (connection error, timeout).
    pub status: Option<u16>,
    /// One outcome per item of the request, in its order.
    pub outcomes: Vec<Outcome>,
}

impl Reply {
    /// The same outcome for every one of `n` items.
    pub fn uniform(status: Option<u16>, outcome: Outcome, n: usize) -> Self {
        Self {
            status,
            outcomes: vec![outcome; n],
        }
    }
}

/// What became of an exhausted event offered to a dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The subscription has no dead-letter topic.
    NotAsked,
    /// Queued to be published there.
    Queued,
    /// The queue was full: the event is in the DLQ only.
    QueueFull,
}

/// A boxed future of a reply.
pub type Sending = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// One subscription's way to its subscriber.
pub trait Subscriber: Send + Sync {
    /// Presents a stored event; `Ok(None)` when no route of the subscriber takes it.
    fn present(&self, raw: &Bytes, view: &EntryView) -> Result<Option<Presented>, EnvelopeError>;
    /// When the subscriber takes nothing for now (a Dapr app its health checks find
    /// unhealthy), the time to look again; its events wait without an attempt counted.
    fn paused_until(&self) -> Option<Instant> {
        None
    }
    /// An endpoint that takes a request now; when none does, the earliest time one may.
    fn pick(&self) -> Result<usize, Option<Instant>>;
    /// Sends `request` to `endpoint` (from [`Subscriber::pick`]).
    fn send(&self, endpoint: usize, request: Request) -> Sending;
    /// Offers an exhausted event (`raw` as stored, `body` as presented) to the
    /// subscription's dead-letter topic.
    fn forward(&self, raw: &Bytes, body: &Bytes, content_type: Option<&Arc<str>>) -> Forwarded;
    /// Whether each endpoint's circuit breaker is open (or probing), by endpoint index.
    fn open_breakers(&self) -> Vec<bool> {
        Vec::new()
    }
    /// A subscriber that keeps whole batches of stored entries (the event store's archive)
    /// rather than taking requests; delivery then hands it what reads return.
    fn sink(&self) -> Option<&dyn Sink> {
        None
    }
}

/// A boxed future of whether a batch was kept (why not, when it was not).
pub type Keeping = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A subscriber that keeps entries as stored, a batch at a time: no lanes, no presenting,
/// no per-event verdicts. A batch is acked once it is kept, and tried again whole, with
/// the subscription's backoff, until it is; keeping one twice must be harmless.
pub trait Sink: Send + Sync {
    /// Keeps `batch` (each item's body is the entry as stored).
    fn keep(&self, batch: Arc<Vec<Item>>) -> Keeping;
    /// Batches kept at once.
    fn concurrency(&self) -> usize;
}

/// Makes the [`Subscriber`] of each subscription.
pub trait Connector: Send + Sync {
    /// The subscriber of `sub`.
    fn connect(&self, sub: &Arc<Subscription>) -> Arc<dyn Subscriber>;
}
