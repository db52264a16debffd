//! evrouter: validated, enriched events published over HTTP (its own API or the Dapr
//! sidecar's), written to Redis Streams in batched pipelines, and delivered to webhooks
//! and Dapr apps at least once, in order per key.
//!
//! The modules are floors; each imports only the floors below it, and nothing imports back
//! (`docs/architecture.md` draws them and the two walks of an event). From the bottom:
//! - [`model`]: plain data and pure functions: the event as sent, the stored envelope,
//!   CloudEvents, subscription specs, routing rules, dead letters, topics and patterns,
//!   trace context, the clock and the lock helper.
//! - [`health`]: the watched parts of the running instance (a round that panics is caught,
//!   logged and retried after a backoff; `/readyz` names the parts down).
//! - [`metrics`]: histograms recorded per thread and merged on read, labelled counters.
//! - [`config`]: the one TOML file: sections, reading (`EVR_*` overrides, paths in every
//!   error) and validation of values.
//! - [`logs`]: JSON lines on request, warnings rate-limited per call site.
//! - [`traces`]: the trace context each publish stores, spans of publish, write, delivery
//!   attempts and dead-lettering, exported over OTLP/HTTP without ever waiting.
//! - [`auth`]: principals and their rights, token and JWT checks, publish quotas.
//! - [`catalog`]: topic → stream → partition, and the key of an event; [`schema`]: the
//!   base schema and per-type schemas.
//! - [`store`]: every Redis command: writers, readers, acks and dead letters, leases,
//!   consumer groups, sequence state, DLQ pages, retention, the durability check.
//! - [`publish`]: the publish pipeline: limits, validation, enrichment, partition, write;
//!   Dapr bodies become envelopes in [`publish::dapr`].
//! - [`delivery`]: subscriptions, partition ownership, readers' dispatch, shards with
//!   per-key lanes, the reorder buffer, retries, stats and DLQ redrive; subscribers are
//!   called through [`delivery::transport`].
//! - [`webhook`]: how subscribers are called: the HTTP(S) client, endpoints and breakers,
//!   the guard against internal addresses, request bodies (plain, bulk, Dapr apps),
//!   signatures, answers, and Dapr apps' subscription lists.
//! - [`eventstore`]: every stored event copied to PostgreSQL by a subscription of its own
//!   (schema migrations, daily partitions, binary `COPY`).
//! - [`ingress`]: the HTTP(S) server: the native API and the Dapr adapter's handlers,
//!   authentication of each request, the audit log, `/metrics` and the dashboard.
//! - this file: [`run`], which wires the floors together, with the secrets it reads from
//!   the environment in `credentials`; `main.rs`: the command line.

pub mod auth;
pub mod catalog;
pub mod config;
mod credentials;
pub use credentials::check_secrets;
pub mod delivery;
pub mod eventstore;
pub mod health;
pub mod ingress;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod schema;
pub mod store;
pub mod traces;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use auth::Authenticator;
use catalog::StreamCatalog;
use config::{Config, Durability};
use delivery::subscription::Subscription;
use delivery::transport::{Connector, Subscriber};
use ingress::{AppState, ServeSettings};
use publish::dapr::DaprPubsubs;
use publish::{PublishLimits, Publisher};
use schema::SchemaRegistry;
use store::durability::{self, Persistence};
use store::retention::{self, TrimFloors};
use store::writer::WriterSettings;
use store::{RedisTarget, WriterPool};
use webhook::dapr::apps::AppSubscriptions;
use webhook::Webhooks;

/// Why evrouter could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A schema failed to load or compile.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    /// Redis could not be set up.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A principal's token could not be read.
    #[error(transparent)]
    Auth(#[from] auth::SetupError),
    /// The event store's settings cannot be used.
    #[error(transparent)]
    EventStore(#[from] eventstore::EventStoreError),
    /// Span export could not be set up.
    #[error(transparent)]
    Traces(#[from] traces::TraceSetupError),
    /// The listener's TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] ingress::tls::TlsError),
    /// `durability = "strict"` and Redis could lose acknowledged events.
    #[error("redis.durability is strict but {0}")]
    NotDurable(String),
    /// `durability = "strict"` and Redis may evict keys when full.
    #[error("redis.durability is strict but {0}")]
    Evicting(String),
    /// Parts panicked while running: each panic was caught, logged and the part restarted,
    /// but a bug was hit, and the exit status says so.
    /// A listener could not be opened.
    #[error("cannot listen: {0}")]
    Bind(String),
    #[error("parts panicked while running (each was caught and the part restarted): {0}")]
    Panicked(String),
}

/// Runs evrouter on `listener` until `shutdown` completes, then drains in-flight publishes,
/// flushes the writers and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let schemas = Arc::new(SchemaRegistry::load(&config.validation)?);
    let authenticator = Arc::new(Authenticator::new(&config.auth, |var| {
        std::env::var(var).ok()
    })?);
    if !authenticator.required() {
        if config.auth.allow_anonymous {
            tracing::warn!(listen = %config.server.listen, "authentication is off (auth.allow_anonymous): every caller may do everything");
        } else {
            tracing::info!("authentication is off: listening on loopback only");
        }
    }
    let target = redis_target(&config)?;
    let mut control = target.manager()?;
    check_durability(&mut control, config.redis.durability).await?;
    check_memory(&mut control, config.redis.durability).await?;

    let catalog = Arc::new(StreamCatalog::new(&config));
    let health = Arc::new(health::Health::default());
    let watched = health.clone();
    let metrics = Arc::new(metrics::Metrics::default());
    let windows = metrics::spawn_windows(metrics.clone());
    let floors = Arc::new(TrimFloors::default());
    let connections = (0..config.writer.writers)
        .map(|_| target.manager())
        .collect::<Result<Vec<_>, _>>()?;
    let writers = Arc::new(WriterPool::start(
        connections,
        WriterSettings {
            max_batch: config.writer.max_batch,
            linger: config.writer.linger.get(),
            queue_capacity: config.writer.queue_capacity,
            response_timeout: target.response_timeout(),
        },
        floors.clone(),
        &health,
        &metrics,
    ));
    // Learn every group's floor before the first append can trim.
    let mut trim_conn = target.manager()?;
    let trim = retention::TrimSettings {
        prefix: config.redis.key_prefix.clone(),
        memory_share: config.retention.memory_share,
        dlq_max_len: config.retention.dlq_max_len,
        dlq_block: config.retention.dlq_when_full == config::WhenFull::Block,
    };
    let first_pass = retention::trim_once(&catalog, &mut trim_conn, &floors, &trim);
    match tokio::time::timeout(target.response_timeout() * 2, first_pass).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "first retention check failed; will retry"),
        Err(_) => tracing::warn!("first retention check timed out; will retry"),
    }
    let trimmer = tokio::spawn(retention::run_trimmer(
        catalog.clone(),
        trim_conn,
        floors,
        config.retention.check_interval.get(),
        trim.clone(),
        health.part("trimmer"),
    ));

    // Validation checked every spec; compiling one can still fail only on what it could
    // not check, and such a subscription is left out with a warning.
    let eventstore = eventstore::EventStore::new(&config.eventstore)?;
    let outcomes = eventstore.clone().map(|store| {
        eventstore::outcomes::Outcomes::start(store, config.eventstore.outcomes_sample)
    });
    let archive_spec = eventstore
        .is_some()
        .then(|| eventstore::archive_spec(&config.eventstore));
    let configured = config
        .subscriptions
        .iter()
        .chain(archive_spec.iter())
        .filter_map(|spec| match Subscription::new(spec.clone()) {
            Ok(sub) => Some(sub),
            Err(problems) => {
                tracing::warn!(subscription = %spec.name, ?problems, "configured subscription left out");
                None
            }
        })
        .collect();
    let instance = store::lease::new_instance_id();
    let (tracer, exporter) = traces::Tracer::start(&config.tracing, &instance)?;
    let dapr = Arc::new(
        DaprPubsubs::new(&config.dapr)
            .with_schemas(schemas.clone())
            .with_tracer(tracer.clone()),
    );
    let (forwards_tx, forwards_rx) = tokio::sync::mpsc::channel(1024);
    let guard = Arc::new(webhook::guard::Guard::new(&config.webhooks.allow));
    let app_tokens = credentials::app_tokens(&config)?;
    let roots = webhook::Roots::load(config.webhooks.ca.as_deref()).map_err(|message| {
        ingress::tls::TlsError {
            path: "webhooks.ca".into(),
            message,
        }
    })?;
    let app_health = Arc::new(webhook::dapr::health::AppHealth::new(&config.dapr.apps));
    let connector = Arc::new(Connectors {
        webhooks: Webhooks::new(guard.clone(), &roots, Some(forwards_tx))
            .with_app_tokens(app_tokens.clone())
            .with_app_urls(
                config
                    .dapr
                    .apps
                    .iter()
                    .map(|a| (a.id.as_str(), a.url.as_str())),
            )
            .with_app_health(app_health.clone()),
        archive: eventstore
            .clone()
            .map(|store| Arc::new(eventstore::archive::Archive::new(store)) as Arc<dyn Subscriber>),
    });
    let upkeep = eventstore.clone().map(eventstore::EventStore::spawn_upkeep);
    let delivery = delivery::Runtime::start(
        catalog.clone(),
        target.clone(),
        delivery::Settings {
            instance,
            prefix: config.redis.key_prefix.clone(),
            lease_ttl: config.delivery.lease_ttl.get(),
            read_block: config.delivery.read_block.get(),
            read_linger: config.delivery.read_linger.get(),
            shards: config.delivery.shards,
            readers: config.delivery.readers,
            max_subscriptions: config.delivery.max_subscriptions,
            grace: config.server.shutdown_budget.get(),
            dlq: store::acks::DlqBound {
                max_len: config.retention.dlq_max_len,
                block: config.retention.dlq_when_full == config::WhenFull::Block,
            },
            tracer: tracer.clone(),
            outcomes: outcomes
                .as_ref()
                .map(|(log, _)| log.clone() as Arc<dyn delivery::outcomes::OutcomeLog>),
        },
        configured,
        connector,
        health.clone(),
        metrics.clone(),
    )
    .await?;
    if eventstore.is_none() {
        // An archive left from a run with the event store on would hold retention back.
        match delivery.delete(eventstore::ARCHIVE).await {
            Ok(true) => {
                tracing::info!("the event store is off: its archive subscription was removed")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, "could not remove the event store's archive subscription")
            }
        }
    }

    let publisher = Arc::new(
        Publisher::new(
            catalog,
            schemas.clone(),
            writers.clone(),
            PublishLimits {
                max_batch: config.server.max_batch,
                max_depth: config.server.max_json_depth,
                timeout: config.server.publish_timeout.get(),
            },
        )
        .with_tracer(tracer.clone()),
    );
    let app_publishers: std::collections::HashMap<String, Arc<auth::Principal>> =
        (config.dapr.apps)
            .iter()
            .filter_map(|app| {
                Some((
                    app.id.clone(),
                    authenticator.acting_as(app.principal.as_deref())?,
                ))
            })
            .collect();
    let dead_letters = publish::dapr::spawn_forwarder(
        dapr.clone(),
        publisher.clone(),
        app_publishers.clone(),
        forwards_rx,
    );
    let dapr_apps = Arc::new(
        AppSubscriptions::new(
            config.dapr.apps.clone(),
            config.dapr.subscriptions_dir.clone(),
            dapr.clone(),
            delivery.clone(),
        )
        .with_app_tokens(app_tokens.clone())
        .with_publishers(app_publishers),
    );
    let app_watcher = dapr_apps.clone().spawn(config.dapr.refresh_interval.get());
    let app_prober = app_health
        .clone()
        .spawn(config.dapr.apps.clone(), app_tokens.clone());
    let replays = match &eventstore {
        Some(store) => Some(eventstore::replay::Replays::new(
            store.clone(),
            delivery.clone(),
            publisher.clone(),
            target.manager()?,
            &config.redis.key_prefix,
        )),
        None => None,
    };
    let audit = store::audit::AuditLog::new(
        target.manager()?,
        &config.redis.key_prefix,
        config.audit.retention.get(),
        (config.audit.max_entries, config.audit.max_refusals),
    );
    let state = Arc::new(AppState {
        guard,
        auth: authenticator,
        audit,
        refusals: ingress::refusals::Refusals::new(&config.audit),
        publisher,
        dapr,
        dapr_apps,
        app_health,
        delivery: delivery.clone(),
        eventstore: eventstore.clone(),
        replays,
        health,
        metrics: metrics.clone(),
        timeline: ingress::ui::Timeline::default(),
        control,
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout.get(),
        ready_timeout: target.response_timeout(),
    });
    let connections = ingress::limits::ConnectionSlots::new(config.server.max_connections);
    ingress::limits::check_descriptors(
        config.server.max_connections,
        config.delivery.max_subscriptions,
    );
    let settings = ServeSettings {
        header_read_timeout: config.server.header_read_timeout.get(),
        grace: config.server.shutdown_budget.get(),
        connections: connections.clone(),
    };
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        type_schemas = schemas.type_schemas(),
        "evrouter serving"
    );
    let tls = match &config.server.tls {
        Some(tls) => Some(Arc::new(ingress::tls::Tls::new(tls)?)),
        None => None,
    };
    let reloader = tls.as_ref().map(ingress::tls::Tls::spawn_reloader);
    let sampler = ingress::ui::spawn_sampler(state.clone());
    let refusals = ingress::refusals::spawn_flusher(state.clone());
    // One budget for all of shutdown, from the signal on: requests in flight are answered
    // while the partitions are handed over, then the writers flush.
    let budget = config.server.shutdown_budget.get();
    let (begun, mut deadline) = tokio::sync::watch::channel(None);
    let shutdown = async move {
        shutdown.await;
        let _ = begun.send(Some(tokio::time::Instant::now() + budget));
    };
    let dapr_grpc = match config.dapr.grpc_listen.parse::<std::net::SocketAddr>() {
        Ok(address) => {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|e| RunError::Bind(format!("dapr.grpc_listen {address}: {e}")))?;
            let mut stop = deadline.clone();
            let limits = ingress::dapr::grpc_serve::GrpcSettings::new(&config, connections);
            Some(tokio::spawn(ingress::dapr::grpc_serve::serve(
                listener,
                state.clone(),
                limits,
                async move {
                    let _ = stop.wait_for(Option::is_some).await;
                },
            )))
        }
        Err(_) => None,
    };
    let delivery_stopped = {
        let delivery = delivery.clone();
        tokio::spawn(async move {
            let _ = deadline.wait_for(Option::is_some).await;
            let at = deadline
                .borrow()
                .unwrap_or_else(|| tokio::time::Instant::now() + budget);
            delivery.shutdown(at).await;
        })
    };
    ingress::serve(
        listener,
        ingress::router(state.clone()),
        settings,
        tls,
        shutdown,
    )
    .await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }

    sampler.abort();
    refusals.abort();
    if let Some(dapr_grpc) = dapr_grpc {
        let _ = dapr_grpc.await;
    }
    // The counts of the last interval.
    ingress::refusals::flush(&state).await;
    drop(state);
    app_watcher.abort();
    app_prober.abort();
    let _ = delivery_stopped.await;
    dead_letters.abort();
    trimmer.abort();
    windows.abort();
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    if let Some((_, writer)) = outcomes {
        writer.abort();
    }
    writers.shutdown().await;
    if let Some(exporter) = exporter {
        // What is queued is sent, within the export timeout.
        tracer.close();
        let _ = tokio::time::timeout(config.tracing.timeout.get(), exporter).await;
    }
    tracing::info!("evrouter stopped");
    let panics = watched.panics();
    if !panics.is_empty() {
        let parts: Vec<String> = panics
            .iter()
            .map(|(part, n)| format!("{part} ×{n}"))
            .collect();
        return Err(RunError::Panicked(parts.join(", ")));
    }
    Ok(())
}

/// Writes the archived events stored in `[from, to)` (of `topics`, or all) back into their
/// Redis partitions with their ids (`evrouter restore`), calling `progress(done, total)`.
pub async fn restore(
    config: &Config,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
    topics: &[String],
    slice_events: u64,
    progress: impl Fn(u64, u64),
) -> Result<eventstore::restore::Restored, RunError> {
    let store = eventstore::EventStore::new(&config.eventstore)?.ok_or_else(|| {
        RunError::EventStore(eventstore::EventStoreError::Config(
            "no event store is configured".into(),
        ))
    })?;
    store.prepare().await?;
    let target = redis_target(config)?;
    let conn = target.manager_with_timeout(std::time::Duration::from_secs(30))?;
    let prefix = &config.redis.key_prefix;
    let range = eventstore::restore::Range::new(&store, prefix, topics, slice_events);
    Ok(eventstore::restore::restore(&range, &conn, from, to, progress).await?)
}

/// Subscribers for delivery: the event store's archive writes to PostgreSQL, every other
/// subscription is called over HTTP.
struct Connectors {
    webhooks: Webhooks,
    archive: Option<Arc<dyn Subscriber>>,
}

impl Connector for Connectors {
    fn connect(&self, sub: &Arc<Subscription>) -> Arc<dyn Subscriber> {
        match &self.archive {
            Some(archive) if sub.spec.name == eventstore::ARCHIVE => archive.clone(),
            _ => self.webhooks.connect(sub),
        }
    }
}

/// Redis as the config names it (password and TLS included).
fn redis_target(config: &Config) -> Result<RedisTarget, RunError> {
    let password = credentials::redis_password(config)?;
    let redis_tls = redis_tls(config)?;
    Ok(RedisTarget::new(
        &config.redis.url,
        password.as_deref(),
        Some(&redis_tls),
        config.redis.response_timeout.get(),
        config.redis.connect_timeout.get(),
    )?)
}

/// The files of TLS to Redis, read.
fn redis_tls(config: &Config) -> Result<store::RedisTls, RunError> {
    let read = |path: &str, file: &std::path::Path| {
        std::fs::read(file).map_err(|e| {
            RunError::Tls(ingress::tls::TlsError {
                path: path.into(),
                message: format!("{}: {e}", file.display()),
            })
        })
    };
    let ca = match &config.redis.tls_ca {
        Some(file) => Some(read("redis.tls_ca", file)?),
        None => None,
    };
    let client = match (&config.redis.tls_client_cert, &config.redis.tls_client_key) {
        (Some(cert), Some(key)) => Some((
            read("redis.tls_client_cert", cert)?,
            read("redis.tls_client_key", key)?,
        )),
        _ => None,
    };
    Ok(store::RedisTls { ca, client })
}

/// Refuses (strict) or warns about (warn) an eviction policy that can drop evrouter's keys;
/// warns when Redis has no memory limit (it then grows until the machine runs out).
async fn check_memory(
    control: &mut redis::aio::ConnectionManager,
    policy: Durability,
) -> Result<(), RunError> {
    if policy == Durability::Off {
        return Ok(());
    }
    let Some(memory) = durability::memory(control).await else {
        tracing::warn!("could not read Redis's maxmemory settings (CONFIG not allowed?)");
        return Ok(());
    };
    if let Some(risk) = memory.eviction_risk() {
        if policy == Durability::Strict {
            return Err(RunError::Evicting(risk));
        }
        tracing::warn!("{risk}");
    }
    if memory.maxmemory == 0 {
        tracing::warn!("Redis has no maxmemory: it grows until the machine runs out; set maxmemory (with maxmemory-policy noeviction) so that evrouter answers 507 when it is full");
    }
    Ok(())
}

async fn check_durability(
    control: &mut redis::aio::ConnectionManager,
    policy: Durability,
) -> Result<(), RunError> {
    if policy == Durability::Off {
        return Ok(());
    }
    let persistence = durability::check(control).await;
    match (persistence, policy) {
        (Persistence::Durable, _) => {
            tracing::info!("redis persistence: appendonly with appendfsync always");
            Ok(())
        }
        (Persistence::Lossy(why) | Persistence::Unknown(why), Durability::Strict) => {
            Err(RunError::NotDurable(why))
        }
        (Persistence::Lossy(why), _) => {
            tracing::warn!("acknowledged events can be lost if Redis crashes: {why}");
            Ok(())
        }
        (Persistence::Unknown(why), _) => {
            tracing::warn!("could not verify Redis persistence: {why}");
            Ok(())
        }
    }
}
