//! Each part started with what it needs, and recorded with how it stops. Nothing here can
//! fail: what could was done in [`super::Built::new`].

use std::sync::Arc;

use super::build::{Apps, Core, Delivery, Storage};
use super::{Parts, Stop};
use crate::config::{self, Config};
use crate::delivery::outcomes::OutcomeLog;
use crate::delivery::Runtime;
use crate::eventstore::{self, EventStore};
use crate::model::dead_letter::Forward;
use crate::publish::{self, PublishLimits, Publisher};
use crate::store::retention;
use crate::store::writer::{WriterPool, WriterSettings};
use crate::webhook::dapr::apps::AppSubscriptions;
use crate::{metrics, traces};

/// The metrics' sliding windows, stepped.
pub(crate) fn metrics(core: &Core, parts: &mut Parts) {
    let windows = metrics::spawn_windows(core.metrics.clone());
    parts.started("metrics windows", Stop::Abort(windows));
}

/// The span exporter; at its stop, what is queued is sent within the export timeout.
pub(crate) fn exporter(
    config: &Config,
    core: &Core,
    export: Option<traces::Export>,
    parts: &mut Parts,
) {
    let Some(export) = export else {
        return;
    };
    let task = export.spawn();
    let tracer = core.tracer.clone();
    let timeout = config.tracing.timeout.get();
    parts.started(
        "span exporter",
        Stop::work(async move {
            tracer.close();
            let _ = tokio::time::timeout(timeout, task).await;
        }),
    );
}

/// Retention, whose first pass checks every stream's bounds before the first append, then
/// the writers, which flush what is queued at their stop.
pub(crate) async fn storage(
    config: &Config,
    core: &Core,
    storage: Storage,
    parts: &mut Parts,
) -> Arc<WriterPool> {
    let Storage { writers, mut trim } = storage;
    let settings = retention::TrimSettings {
        prefix: config.redis.key_prefix.clone(),
        memory_share: config.retention.memory_share,
        dlq_max_len: config.retention.dlq_max_len,
        dlq_block: config.retention.dlq_when_full == config::WhenFull::Block,
    };
    let first_pass = retention::trim_once(&core.catalog, &mut trim, &settings);
    match tokio::time::timeout(core.target.response_timeout() * 2, first_pass).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "first retention check failed; will retry"),
        Err(_) => tracing::warn!("first retention check timed out; will retry"),
    }
    let trimmer = tokio::spawn(retention::run_trimmer(
        core.catalog.clone(),
        trim,
        config.retention.check_interval.get(),
        settings,
        core.health.part("trimmer"),
    ));
    parts.started("trimmer", Stop::Abort(trimmer));
    let writers = Arc::new(WriterPool::start(
        writers,
        WriterSettings {
            max_batch: config.writer.max_batch,
            linger: config.writer.linger.get(),
            queue_capacity: config.writer.queue_capacity,
            response_timeout: core.target.response_timeout(),
        },
        &core.health,
        &core.metrics,
    ));
    let flushed = writers.clone();
    parts.started(
        "writers",
        Stop::work(async move { flushed.shutdown().await }),
    );
    writers
}

/// The event store's upkeep (its schema and daily partitions) and the writer of delivery
/// outcomes, when the event store is on.
pub(crate) fn eventstore(
    config: &Config,
    store: Option<Arc<EventStore>>,
    parts: &mut Parts,
) -> Option<Arc<dyn OutcomeLog>> {
    let store = store?;
    let (log, writer) =
        eventstore::outcomes::Outcomes::start(store.clone(), config.eventstore.outcomes_sample);
    parts.started("outcome writer", Stop::Abort(writer));
    parts.started("event store upkeep", Stop::Abort(store.spawn_upkeep()));
    Some(log as Arc<dyn OutcomeLog>)
}

/// The publish pipeline (no task of its own: it hands entries to the writers).
pub(crate) fn publisher(config: &Config, core: &Core, writers: Arc<WriterPool>) -> Arc<Publisher> {
    Arc::new(
        Publisher::new(
            core.catalog.clone(),
            core.schemas.clone(),
            writers,
            PublishLimits {
                max_batch: config.server.max_batch,
                max_depth: config.server.max_json_depth,
                timeout: config.server.publish_timeout.get(),
            },
        )
        .with_tracer(core.tracer.clone()),
    )
}

/// Dead letters forwarded to the Dapr dead-letter topics, published as their app.
pub(crate) fn forwarder(
    apps: &Apps,
    publisher: &Arc<Publisher>,
    forwards: tokio::sync::mpsc::Receiver<Forward>,
    parts: &mut Parts,
) {
    let task = publish::dapr::spawn_forwarder(
        apps.dapr.clone(),
        publisher.clone(),
        apps.publishers.clone(),
        forwards,
    );
    parts.started("dead-letter forwarder", Stop::Abort(task));
}

/// Delivery: the configured subscriptions stored, then the control task that takes the
/// leases. When the drain begins it hands every partition over by the deadline.
pub(crate) async fn delivery(
    core: &Core,
    delivery: Delivery,
    outcomes: Option<Arc<dyn OutcomeLog>>,
    parts: &mut Parts,
) -> Arc<Runtime> {
    let archive = delivery.archive;
    let mut settings = delivery.settings;
    settings.outcomes = outcomes;
    let runtime = Runtime::start(
        delivery.connected,
        core.catalog.clone(),
        settings,
        delivery.configured,
        delivery.connector,
        core.health.clone(),
        core.metrics.clone(),
    )
    .await;
    if !archive {
        // An archive left from a run with the event store on would hold retention back.
        match runtime.delete(eventstore::ARCHIVE).await {
            Ok(true) => {
                tracing::info!("the event store is off: its archive subscription was removed")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, "could not remove the event store's archive subscription")
            }
        }
    }
    let drain = parts.drain_signal();
    let stopping = runtime.clone();
    let task = tokio::spawn(async move {
        let deadline = drain.begun().await;
        stopping.shutdown(deadline).await;
    });
    parts.started("delivery", Stop::Task(task));
    runtime
}

/// The Dapr apps' subscriptions, watched, and their health, probed.
pub(crate) fn dapr_apps(
    config: &Config,
    apps: &Apps,
    delivery: &Arc<Runtime>,
    parts: &mut Parts,
) -> Arc<AppSubscriptions> {
    let subscriptions = Arc::new(
        AppSubscriptions::new(
            config.dapr.apps.clone(),
            config.dapr.subscriptions_dir.clone(),
            apps.dapr.clone(),
            delivery.clone(),
        )
        .with_app_tokens(apps.tokens.clone())
        .with_publishers(apps.publishers.clone()),
    );
    let watcher = subscriptions
        .clone()
        .spawn(config.dapr.refresh_interval.get());
    parts.started("app subscriptions", Stop::Abort(watcher));
    let prober = (apps.health.clone()).spawn(config.dapr.apps.clone(), apps.tokens.clone());
    parts.started("app health", Stop::Abort(prober));
    subscriptions
}
