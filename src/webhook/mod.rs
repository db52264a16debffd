//! The webhook client: how subscribers are called. A pooled keep-alive HTTP client,
//! endpoints with circuit breakers, one request as every HTTP subscriber sends it
//! ([`post`]), plain webhooks ([`subscriber`]) and Dapr apps ([`dapr`]) as two
//! implementations of delivery's subscriber, and what an answer means. [`connect`] picks a
//! subscription's subscriber: it implements delivery's [`Connector`].

pub mod answer;
pub mod breaker;
pub mod connect;
pub mod dapr;
pub mod endpoints;
pub mod guard;
pub mod post;
pub mod signature;
pub mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

#[cfg(doc)]
use crate::delivery::transport::Connector;
use answer::classify;
pub use answer::Answer;
pub use connect::Webhooks;
pub use endpoints::Endpoints;
use guard::{Guard, GuardedResolver};

/// Most bytes of a subscriber's answer that are read.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

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
    /// `traceparent`: the attempt's own span, made by delivery.
    pub traceparent: Option<&'a str>,
    /// The body's content type.
    pub content_type: &'a str,
    /// Request timeout.
    pub timeout: Duration,
    /// The Standard Webhooks headers, for a signed subscription.
    pub signed: Option<signature::Signed>,
    /// A Dapr app's API token, sent as `dapr-api-token`.
    pub app_token: Option<&'a str>,
    /// A replay: `evr-replay: true`.
    pub replay: bool,
}

/// The pooled HTTP client.
#[derive(Clone)]
pub struct Client {
    client: HyperClient<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
}

/// Which certificate authorities `https://` endpoints are checked against.
#[derive(Debug, Clone)]
pub struct Roots(Arc<rustls::RootCertStore>);

/// Why the webhooks' extra CA (`webhooks.ca`) could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("webhooks.ca: {0}")]
pub struct CaError(String);

impl Roots {
    /// The system's roots, and the CA of `extra` (a PEM file) when given.
    pub fn load(extra: Option<&std::path::Path>) -> Result<Self, CaError> {
        use rustls::pki_types::pem::PemObject;
        let mut store = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = store.add(cert);
        }
        if let Some(path) = extra {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|found| found.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CaError(format!("{}: {e}", path.display())))?;
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| CaError(format!("{}: {e}", path.display())))?;
            }
        }
        Ok(Self(Arc::new(store)))
    }
}

impl Client {
    /// A client keeping idle connections to every endpoint, connecting only to the
    /// addresses `guard` allows, over TLS for `https://` endpoints (checked against
    /// `roots`).
    pub fn new(guard: Arc<Guard>, roots: &Roots) -> Self {
        let mut connector = HttpConnector::new_with_resolver(GuardedResolver::new(guard));
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .with_root_certificates(roots.0.clone())
                .with_no_client_auth()
        });
        let connector = match tls {
            Ok(tls) => HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector),
            // ring supports the default versions: not reached.
            Err(_) => HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots.0.clone())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector),
        };
        let client = HyperClient::builder(TokioExecutor::new())
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
        if request.replay {
            builder = builder.header("evr-replay", "true");
        }
        if let Some(token) = request.app_token.and_then(valid) {
            builder = builder.header("dapr-api-token", token);
        }
        if let Some(signed) = &request.signed {
            builder = builder
                .header("webhook-id", &signed.id)
                .header("webhook-timestamp", &signed.timestamp)
                .header("webhook-signature", &signed.signature);
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
                .map_err(|e| error_chain(&e))?;
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

/// An error with its causes, `outer: inner: innermost`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
