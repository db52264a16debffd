//! Delivery to subscriber webhooks: a pooled keep-alive HTTP client, round robin over a
//! subscription's endpoints with a circuit breaker each, and Dapr's rules for answers.

pub mod breaker;
pub mod outcome;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use breaker::Breaker;
pub use outcome::{classify, status_outcome, Outcome};

/// Most bytes of a subscriber's answer that are read.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A subscription's endpoints and their breakers.
#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<Uri>,
    breakers: Mutex<Vec<Breaker>>,
    next: AtomicUsize,
}

impl Endpoints {
    /// Endpoints from validated URLs, each with a breaker that opens after `failures`
    /// failures in a row and probes again after `cooldown`.
    pub fn new(urls: &[String], failures: u32, cooldown: Duration) -> Self {
        let urls: Vec<Uri> = urls.iter().filter_map(|u| u.parse().ok()).collect();
        let breakers = urls
            .iter()
            .map(|_| Breaker::new(failures, cooldown))
            .collect();
        Self {
            urls,
            breakers: Mutex::new(breakers),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint whose breaker lets a request through, round robin; when all are
    /// open, the earliest time one may be probed.
    pub fn pick(&self) -> Result<(usize, &Uri), Option<Instant>> {
        let now = Instant::now();
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.urls.len() {
            let index = (start + offset) % self.urls.len();
            if breakers[index].try_acquire(now) {
                return Ok((index, &self.urls[index]));
            }
        }
        Err(breakers.iter().filter_map(Breaker::retry_at).min())
    }

    /// Records how an endpoint answered.
    pub fn report(&self, index: usize, healthy: bool) {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(breaker) = breakers.get_mut(index) {
            if healthy {
                breaker.success();
            } else {
                breaker.failure(Instant::now());
            }
        }
    }
}

/// One request to a subscriber.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Where to.
    pub url: &'a Uri,
    /// The body: one event's JSON, or a JSON array of them.
    pub body: Bytes,
    /// `evr-event-id` (single mode).
    pub event_id: Option<&'a str>,
    /// `evr-topic` (single mode).
    pub topic: Option<&'a str>,
    /// `evr-attempt`.
    pub attempt: u32,
    /// `traceparent`.
    pub traceparent: Option<&'a str>,
    /// The body's content type.
    pub content_type: &'a str,
    /// Request timeout.
    pub timeout: Duration,
}

/// How an attempt ended, before classification.
#[derive(Debug)]
pub enum Answer {
    /// The subscriber answered.
    Http {
        /// Status code.
        status: u16,
        /// Outcome by Dapr's rules.
        outcome: Outcome,
        /// The answer's body (at most a few kilobytes are read).
        body: Bytes,
    },
    /// No answer: connection error or timeout.
    Failed(String),
}

impl Answer {
    /// Whether the endpoint looks healthy after this answer (for its breaker).
    pub fn healthy(&self) -> bool {
        match self {
            Answer::Http { status, .. } => *status < 500 && *status != 429 && *status != 408,
            Answer::Failed(_) => false,
        }
    }
}

/// The pooled HTTP client.
#[derive(Clone)]
pub struct Deliverer {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Deliverer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deliverer {
    /// A client keeping idle connections to every endpoint.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self { client }
    }

    /// Sends one request and classifies the answer.
    pub async fn send(&self, request: Outgoing<'_>) -> Answer {
        let mut builder = Request::post(request.url.clone())
            .header("content-type", request.content_type)
            .header("evr-attempt", request.attempt.to_string());
        // A value that cannot be a header (a publisher's control characters) is left out
        // rather than failing every attempt.
        let valid = |v: &str| hyper::header::HeaderValue::from_str(v).ok();
        if let Some(id) = request.event_id.and_then(valid) {
            builder = builder.header("evr-event-id", id);
        }
        if let Some(topic) = request.topic.and_then(valid) {
            builder = builder.header("evr-topic", topic);
        }
        if let Some(traceparent) = request.traceparent.and_then(valid) {
            builder = builder.header("traceparent", traceparent);
        }
        let http_request = match builder.body(Full::new(request.body)) {
            Ok(r) => r,
            Err(err) => return Answer::Failed(format!("bad request: {err}")),
        };
        let exchange = async {
            let response = self
                .client
                .request(http_request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            // An answer that cannot be read whole is no answer: the attempt is retried
            // (a bulk answer's statuses must all be read).
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| format!("the answer's body could not be read: {e}"))?;
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(request.timeout, exchange).await {
            Ok(Ok((status, body))) => Answer::Http {
                status,
                outcome: classify(status, &body),
                body,
            },
            Ok(Err(err)) => Answer::Failed(format!("connection error: {err}")),
            Err(_) => Answer::Failed(format!("no answer within {:?}", request.timeout)),
        }
    }
}
