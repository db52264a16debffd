//! Spans of an event's way through evrouter (publish, the Redis write, each delivery
//! attempt, dead-lettering), exported over OTLP/HTTP when `[tracing] otlp_endpoint` is set.
//!
//! Recording never waits: a finished span is offered to a bounded queue and dropped (and
//! counted) when the queue is full, which is what a slow or absent collector leads to.
//! One task takes spans off the queue in batches and exports them with the OpenTelemetry
//! OTLP exporter ([`export`]). Without an endpoint the [`Tracer`] is off and costs a branch.

mod export;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::config::TracingConfig;
use crate::model::trace::{new_traceparent, TraceContext};

/// What a span is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request evrouter answers (a publish).
    Server,
    /// A call evrouter makes (Redis, a subscriber).
    Client,
    /// Work inside evrouter (dead-lettering).
    Internal,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// A number.
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(text: &'static str) -> Self {
        Self::Str(Cow::Borrowed(text))
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Str(Cow::Owned(text))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its trace and its own id.
    pub context: TraceContext,
    /// The span it is a child of, in the same trace.
    pub parent: Option<u64>,
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// When it began, µs since the epoch.
    pub start_us: u64,
    /// When it ended, µs since the epoch.
    pub end_us: u64,
    /// What it was about.
    pub attributes: Vec<(&'static str, Value)>,
    /// Spans of other traces it is about (a bulk request's events).
    pub links: Vec<TraceContext>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A publish span begun: the context stored with the event (the span's own) and the span
/// of the publisher it continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The publish span's context, as stored with the event.
    pub context: TraceContext,
    /// The publisher's span, when it sent a `traceparent`.
    pub parent: Option<u64>,
}

/// Spans recorded and lost since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Accepted by the collector.
    pub exported: u64,
    /// Dropped because the queue was full.
    pub dropped_full: u64,
    /// Dropped because an export failed.
    pub dropped_failed: u64,
}

#[derive(Debug)]
struct Shared {
    queue: mpsc::Sender<Span>,
    sample_ratio: f64,
    exported: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
    closing: Notify,
}

/// Where spans go: off, or a bounded queue to the exporter. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tracer(Option<Arc<Shared>>);

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp_endpoint: {0}")]
pub struct TraceSetupError(String);

/// The exporter of a [`Tracer`], built and not yet running.
pub struct Export {
    exporter: opentelemetry_otlp::SpanExporter,
    rx: mpsc::Receiver<Span>,
    shared: Arc<Shared>,
    max_batch: usize,
    interval: std::time::Duration,
    endpoint: String,
    sample_ratio: f64,
}

impl Export {
    /// Starts the task that exports; it ends after [`Tracer::close`].
    pub fn spawn(self) -> JoinHandle<()> {
        tracing::info!(endpoint = %self.endpoint, sample_ratio = self.sample_ratio, "exporting spans over OTLP/HTTP");
        tokio::spawn(export::run(
            self.exporter,
            self.rx,
            self.shared,
            self.max_batch,
            self.interval,
        ))
    }
}

impl Tracer {
    /// A tracer that records nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// Starts the exporter when `config` names an endpoint; the task it returns ends after
    /// [`Tracer::close`].
    pub fn start(
        config: &TracingConfig,
        instance: &str,
    ) -> Result<(Self, Option<JoinHandle<()>>), TraceSetupError> {
        let (tracer, export) = Self::new(config, instance)?;
        Ok((tracer, export.map(Export::spawn)))
    }

    /// The tracer, and its exporter when `config` names an endpoint, built but not started
    /// (spans offered before [`Export::spawn`] wait in the queue).
    pub fn new(
        config: &TracingConfig,
        instance: &str,
    ) -> Result<(Self, Option<Export>), TraceSetupError> {
        let Some(url) = config.traces_url() else {
            return Ok((Self::off(), None));
        };
        let exporter = export::exporter(&url, config.timeout.get(), instance)?;
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let shared = Arc::new(Shared {
            queue,
            sample_ratio: config.sample_ratio,
            exported: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_failed: AtomicU64::new(0),
            closing: Notify::new(),
        });
        let export = Export {
            exporter,
            rx,
            shared: shared.clone(),
            max_batch: config.max_batch.max(1),
            interval: config.flush_interval.get(),
            endpoint: crate::model::redact::url(&url),
            sample_ratio: config.sample_ratio,
        };
        Ok((Self(Some(shared)), Some(export)))
    }

    /// Whether spans are recorded at all.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The trace context to store with a published event, given the one it came with
    /// (its own or the request's), and the publish span to record when the trace is
    /// sampled. Off, the incoming context is stored as it is (a new one when there is none).
    pub fn begin_publish(&self, incoming: Option<&str>) -> (String, Option<Started>) {
        let incoming = incoming.and_then(|t| TraceContext::parse(t).map(|parsed| (t, parsed)));
        let Some(shared) = &self.0 else {
            return (
                incoming.map_or_else(new_traceparent, |(t, _)| t.to_string()),
                None,
            );
        };
        let (context, parent) = match incoming {
            Some((_, theirs)) => (theirs.child(), Some(theirs.span_id)),
            None => (
                TraceContext::root(fastrand::f64() < shared.sample_ratio),
                None,
            ),
        };
        let started = context.sampled().then_some(Started { context, parent });
        (context.to_traceparent(), started)
    }

    /// Offers a finished span to the exporter; counted as dropped when the queue is full.
    pub fn record(&self, span: Span) {
        if let Some(shared) = &self.0 {
            if shared.queue.try_send(span).is_err() {
                shared.dropped_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Spans exported and dropped since start; `None` when off.
    pub fn stats(&self) -> Option<TraceStats> {
        self.0.as_ref().map(|shared| TraceStats {
            exported: shared.exported.load(Ordering::Relaxed),
            dropped_full: shared.dropped_full.load(Ordering::Relaxed),
            dropped_failed: shared.dropped_failed.load(Ordering::Relaxed),
        })
    }

    /// Asks the exporter to send what is queued and stop.
    pub fn close(&self) {
        if let Some(shared) = &self.0 {
            shared.closing.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_stores_the_incoming_context_unchanged() {
        let tracer = Tracer::off();
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            tracer.begin_publish(Some(theirs)),
            (theirs.to_string(), None)
        );
        let (fresh, started) = tracer.begin_publish(Some("garbage"));
        assert!(crate::model::trace::is_valid_traceparent(&fresh));
        assert_eq!(started, None);
    }

    #[tokio::test]
    async fn on_a_publish_span_continues_the_publishers_trace() {
        let config = TracingConfig {
            otlp_endpoint: Some("http://127.0.0.1:9".into()),
            ..TracingConfig::default()
        };
        let (tracer, task) = Tracer::start(&config, "test").expect("starts");
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (stored, started) = tracer.begin_publish(Some(theirs));
        let started = started.expect("sampled");
        let stored = TraceContext::parse(&stored).expect("valid");
        assert_eq!(stored, started.context);
        assert_eq!(stored.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_ne!(stored.span_id, 0xb7ad6b7169203331);
        assert_eq!(started.parent, Some(0xb7ad6b7169203331));
        // A trace its publisher does not sample is not recorded here either.
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert_eq!(tracer.begin_publish(Some(unsampled)).1, None);
        tracer.close();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
