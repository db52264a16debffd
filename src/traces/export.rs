//! The export task: batches of finished spans become OpenTelemetry span data, sent by the
//! OTLP/HTTP (protobuf) exporter of `opentelemetry-otlp`.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

use super::{Kind, Shared, Span, TraceSetupError, Value};
use crate::model::trace::TraceContext;

/// The OTLP/HTTP exporter posting to `url`, over TLS for `https://` (system roots).
pub(super) fn exporter(
    url: &str,
    timeout: Duration,
    instance: &str,
) -> Result<opentelemetry_otlp::SpanExporter, TraceSetupError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| TraceSetupError(format!("no TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = opentelemetry_http::hyper::HyperClient::new(connector, timeout, None);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(timeout)
        .build()
        .map_err(|e| TraceSetupError(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name("evrouter")
            .with_attributes([
                KeyValue::new("service.instance.id", instance.to_string()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build(),
    );
    Ok(exporter)
}

/// Sends batches of up to `max_batch` spans, a partial one after `interval`, until the
/// tracer is closed (what is queued then is sent once more).
pub(super) async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Span>,
    shared: Arc<Shared>,
    max_batch: usize,
    interval: Duration,
) {
    let scope = InstrumentationScope::builder("evrouter")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut closing = false;
    while !closing {
        let mut batch = Vec::with_capacity(max_batch);
        tokio::select! {
            biased;
            _ = shared.closing.notified() => closing = true,
            n = rx.recv_many(&mut batch, max_batch) => if n == 0 { return },
        }
        if closing {
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        } else {
            let deadline = tokio::time::Instant::now() + interval;
            while batch.len() < max_batch {
                let room = max_batch - batch.len();
                tokio::select! {
                    biased;
                    _ = shared.closing.notified() => { closing = true; break }
                    _ = tokio::time::sleep_until(deadline) => break,
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let data = batch.into_iter().map(|s| span_data(s, &scope)).collect();
        match exporter.export(data).await {
            Ok(()) => {
                shared.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) => {
                shared.dropped_failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %err, spans = n, "span export failed; the spans are dropped");
            }
        }
    }
}

fn time(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

fn context(ctx: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from(ctx.trace_id),
        SpanId::from(ctx.span_id),
        TraceFlags::new(ctx.flags),
        false,
        TraceState::NONE,
    )
}

fn span_data(span: Span, scope: &InstrumentationScope) -> SpanData {
    let mut links = SpanLinks::default();
    links.links = span
        .links
        .iter()
        .map(|linked| Link::with_context(context(linked)))
        .collect();
    SpanData {
        span_context: context(&span.context),
        parent_span_id: span.parent.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: false,
        span_kind: match span.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Internal => SpanKind::Internal,
        },
        name: Cow::Owned(span.name),
        start_time: time(span.start_us),
        end_time: time(span.end_us.max(span.start_us)),
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| match value {
                Value::Str(text) => KeyValue::new(key, text),
                Value::Int(n) => KeyValue::new(key, n),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links,
        status: match span.error {
            Some(reason) => Status::error(reason),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
