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
//! - this file: [`run`], the list of evrouter's parts: each built in `parts` (everything
//!   that can fail, before any starts), then started in order and drained in reverse; the
//!   secrets it reads from files and the environment are in `credentials`; `main.rs`: the
//!   command line.

pub mod auth;
pub mod catalog;
pub mod config;
mod credentials;
pub use credentials::{check_secrets, CredentialError};
pub mod delivery;
pub mod eventstore;
pub mod health;
pub mod ingress;
pub mod logs;
pub mod metrics;
pub mod model;
mod parts;
pub mod publish;
pub mod schema;
pub mod store;
pub mod traces;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use config::Config;
use delivery::Runtime;
use ingress::listeners::Listeners;
use ingress::AppState;
use parts::{start, Parts, Stop};
use publish::Publisher;
use webhook::dapr::apps::AppSubscriptions;

/// Why evrouter could not start, each cause in the type of the floor it comes from; or
/// why a run that started ended with an error ([`RunError::Panicked`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A schema failed to load or compile.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    /// A principal's token could not be read.
    #[error(transparent)]
    Auth(#[from] auth::SetupError),
    /// A secret (the Redis password, a file of TLS to Redis, an app's token) could not be
    /// read.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// Redis could not be set up.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// `durability = "strict"` and Redis could lose acknowledged events.
    #[error("redis.durability is strict but {0}")]
    NotDurable(String),
    /// `durability = "strict"` and Redis may evict keys when full.
    #[error("redis.durability is strict but {0}")]
    Evicting(String),
    /// The event store's settings cannot be used.
    #[error(transparent)]
    EventStore(#[from] eventstore::EventStoreError),
    /// Span export could not be set up.
    #[error(transparent)]
    Traces(#[from] traces::TraceSetupError),
    /// The webhooks' CA could not be loaded.
    #[error(transparent)]
    WebhookCa(#[from] webhook::CaError),
    /// A listener could not be set up (its certificate, or its address).
    #[error(transparent)]
    Listen(#[from] ingress::listeners::ListenError),
    /// Parts panicked while running: each panic was caught, logged and the part restarted,
    /// but a bug was hit, and the exit status says so.
    #[error("parts panicked while running (each was caught and the part restarted): {0}")]
    Panicked(String),
}

impl RunError {
    /// Whether evrouter could not start (rather than ended with an error).
    pub fn is_start(&self) -> bool {
        !matches!(self, Self::Panicked(_))
    }
}

/// Runs evrouter on `listener` until `shutdown` completes, then drains: the listeners stop
/// accepting and answer what is in flight while delivery hands its partitions over, then
/// every part stops in reverse start order, the writers flushed, all within
/// `server.shutdown_budget`.
///
/// Everything that can fail is done before any part starts, so an error leaves no lease,
/// task or listener behind.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // Everything that can fail, before any part starts.
    let parts::Built {
        core,
        storage,
        eventstore,
        export,
        delivery,
        apps,
        forwards,
        api,
    } = parts::Built::new(&config).await?;
    let listeners = Listeners::bind(&config, listener).await?;
    let address = listeners.address();

    // Each part in order, with what it needs; the drain stops them in reverse.
    let mut parts = Parts::new(config.server.shutdown_budget.get());
    start::metrics(&core, &mut parts);
    start::exporter(&config, &core, export, &mut parts);
    let writers = start::storage(&config, &core, storage, &mut parts).await;
    let outcomes = start::eventstore(&config, eventstore, &mut parts);
    let publisher = start::publisher(&config, &core, writers);
    start::forwarder(&apps, &publisher, forwards, &mut parts);
    let delivery = start::delivery(&core, delivery, outcomes, &mut parts).await;
    let dapr_apps = start::dapr_apps(&config, &apps, &delivery, &mut parts);
    let state = state(&config, &core, api, apps, publisher, dapr_apps, delivery);
    serve(&config, state, listeners, &mut parts);
    tracing::info!(listen = %address, type_schemas = core.schemas.type_schemas(), "evrouter serving");

    shutdown.await;
    parts.drain().await;
    tracing::info!("evrouter stopped");
    let panics = core.health.panics();
    if !panics.is_empty() {
        let parts: Vec<String> = panics
            .iter()
            .map(|(part, n)| format!("{part} ×{n}"))
            .collect();
        return Err(RunError::Panicked(parts.join(", ")));
    }
    Ok(())
}

/// What every handler shares.
fn state(
    config: &Config,
    core: &parts::Core,
    api: parts::Api,
    apps: parts::Apps,
    publisher: Arc<Publisher>,
    dapr_apps: Arc<AppSubscriptions>,
    delivery: Arc<Runtime>,
) -> Arc<AppState> {
    let replays = match (&api.eventstore, api.replays) {
        (Some(store), Some(conn)) => Some(eventstore::replay::Replays::new(
            store.clone(),
            delivery.clone(),
            publisher.clone(),
            conn,
            &config.redis.key_prefix,
        )),
        _ => None,
    };
    Arc::new(AppState {
        guard: apps.guard,
        auth: core.authenticator.clone(),
        audit: api.audit,
        refusals: ingress::refusals::Refusals::new(&config.audit),
        publisher,
        dapr: apps.dapr,
        dapr_apps,
        app_health: apps.health,
        delivery,
        eventstore: api.eventstore,
        replays,
        health: core.health.clone(),
        metrics: core.metrics.clone(),
        timeline: ingress::ui::Timeline::default(),
        control: api.control,
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout.get(),
        ready_timeout: core.target.response_timeout(),
    })
}

/// The API served: the refused requests' counts (the last interval's written at the
/// stop), the dashboard's sampler, then the listeners, which stop accepting when the
/// drain begins and let the requests in flight finish.
fn serve(config: &Config, state: Arc<AppState>, listeners: Listeners, parts: &mut Parts) {
    let flusher = ingress::refusals::spawn_flusher(state.clone());
    let counted = state.clone();
    parts.started(
        "refusal counts",
        Stop::work(async move {
            flusher.abort();
            ingress::refusals::flush(&counted).await;
        }),
    );
    let sampler = ingress::ui::spawn_sampler(state.clone());
    parts.started("dashboard sampler", Stop::Abort(sampler));
    let drain = parts.drain_signal();
    let serving = listeners.serve(config, state, || drain.clone().wait());
    if let Some(reloader) = serving.reloader {
        parts.started("certificate reloader", Stop::Abort(reloader));
    }
    if let Some(grpc) = serving.grpc {
        parts.started("Dapr gRPC listener", Stop::Task(grpc));
    }
    parts.started("HTTP listener", Stop::Task(serving.http));
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
    let target = parts::redis_target(config)?;
    let conn = target.manager_with_timeout(std::time::Duration::from_secs(30))?;
    let prefix = &config.redis.key_prefix;
    let range = eventstore::restore::Range::new(&store, prefix, topics, slice_events);
    Ok(eventstore::restore::restore(&range, &conn, from, to, progress).await?)
}
