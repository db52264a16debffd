//! One request to an endpoint of a subscriber over HTTP, as webhooks and Dapr apps both send
//! it: the endpoint's address checked against the guard, the Standard Webhooks signature of
//! a signed subscription, a Dapr app's token, the timeout, and the subscription's rule for a
//! 404 answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;

use super::answer::{Answer, Outcome};
use super::endpoints::Endpoints;
use super::guard::Guard;
use super::signature;
use super::{Client, Outgoing};
use crate::delivery::subscription::Subscription;
use crate::delivery::transport::{Reply, Request};
use crate::model::clock::now_ms;

/// The content type of a body unless an event says otherwise.
pub const JSON: &str = "application/json";

/// How one subscription's requests go out over HTTP.
pub struct Poster {
    /// The subscription.
    pub sub: Arc<Subscription>,
    /// Its endpoints, with their breakers.
    pub endpoints: Arc<Endpoints>,
    /// The pooled client it sends with.
    pub client: Client,
    /// Checks an endpoint given as an address (names are checked when resolved); `None`
    /// for a configured Dapr app's subscription to the app's own address.
    pub guard: Option<Arc<Guard>>,
    /// A Dapr app's API token, sent as `dapr-api-token`.
    pub app_token: Option<Arc<str>>,
}

impl Poster {
    /// The URL of `endpoint`, or why nothing is sent to it.
    pub fn url(&self, endpoint: usize) -> Result<&Uri, Outcome> {
        let Some(base) = self.endpoints.url(endpoint) else {
            return Err(Outcome::Retry(format!("no endpoint {endpoint}")));
        };
        if let (Some(guard), Some(host)) = (&self.guard, base.host()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse().is_ok_and(|ip| !guard.allows_ip(ip)) {
                return Err(Outcome::Retry(
                    "the endpoint's address is refused (internal)".into(),
                ));
            }
        }
        Ok(base)
    }

    /// Posts `body` to `url` (of `endpoint`) for the events of `request`, tells the
    /// endpoint's breaker how it went, and reads a 404 by the subscription's rule.
    pub fn post(
        &self,
        endpoint: usize,
        url: Uri,
        body: Bytes,
        content_type: Arc<str>,
        request: Request,
    ) -> impl Future<Output = Answer> + Send + 'static {
        let n = request.items.len();
        // A single event's id is its own; a bulk request's is its first entry's place and
        // size, the same for every attempt of the same batch.
        let signed = self.sub.secrets.as_ref().map(|secrets| {
            let id = match (&request.headers, request.items.first()) {
                (Some(headers), _) => headers.event_id.clone(),
                (None, Some(first)) => format!("{}/{}+{}", first.partition, first.id, n),
                (None, None) => String::new(),
            };
            signature::sign(secrets, &id, now_ms(), &body)
        });
        let client = self.client.clone();
        let app_token = self.app_token.clone();
        let endpoints = self.endpoints.clone();
        let timeout = Duration::from_millis(self.sub.spec.timeout_ms);
        let drops_on_404 = self.sub.spec.drops_on_404();
        let replay = request.replay;
        async move {
            let headers = request.headers.as_ref();
            let answer = client
                .send(Outgoing {
                    url: &url,
                    body,
                    event_id: headers.map(|h| h.event_id.as_str()),
                    topic: headers.map(|h| h.topic.as_str()),
                    attempt: request.attempt,
                    traceparent: request.traceparent.as_deref(),
                    content_type: &content_type,
                    timeout,
                    signed,
                    app_token: app_token.as_deref(),
                    replay,
                })
                .await;
            endpoints.report(endpoint, answer.healthy());
            match answer {
                Answer::Http {
                    status: 404, body, ..
                } if !drops_on_404 => Answer::Http {
                    status: 404,
                    outcome: Outcome::Retry("subscriber answered 404".into()),
                    body,
                },
                other => other,
            }
        }
    }
}

/// One outcome for all `n` items of a request: what its answer means, or a retry when
/// there was none.
pub fn settle_alike(answer: Answer, n: usize) -> Reply {
    match answer {
        Answer::Http {
            status, outcome, ..
        } => Reply::uniform(Some(status), outcome, n),
        Answer::Failed(reason) => Reply::uniform(None, Outcome::Retry(reason), n),
    }
}

/// A reply of the same `outcome` for all `n` items, sent without a request.
pub fn unsent(outcome: Outcome, n: usize) -> crate::delivery::transport::Sending {
    Box::pin(async move { Reply::uniform(None, outcome, n) })
}
