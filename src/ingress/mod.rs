//! The HTTP layer: the native API's handlers and the Dapr adapter's ([`dapr`]), the shared
//! state they use, and the server loop with header-read timeouts and graceful shutdown.
//! Nothing below this floor knows an HTTP request.

pub mod audit;
pub mod auth;
pub mod codes;
pub mod dapr;
pub mod dlq;
pub mod error;
pub mod events;
pub mod health;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod publish;
pub mod refusals;
pub mod replays;
pub mod stats;
pub mod subjects;
pub mod subscriptions;
pub mod tls;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::OriginalUri;
use axum::routing::{get, post};
use axum::Extension;
use tower::Layer;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::delivery::Runtime;
use crate::publish::dapr::DaprPubsubs;
use crate::publish::Publisher;
use crate::store::audit::AuditLog;
use crate::webhook::dapr::apps::AppSubscriptions;
use crate::webhook::guard::Guard;
use codes::ErrorCode;
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    /// Who is calling.
    pub auth: Arc<Authenticator>,
    /// Which webhook addresses are allowed.
    pub guard: Arc<Guard>,
    /// Where changes and refusals are recorded.
    pub audit: AuditLog,
    /// The refused requests of the current interval, counted before they are written.
    pub refusals: refusals::Refusals,
    /// The publish pipeline.
    pub publisher: Arc<Publisher>,
    /// The Dapr API's pubsub names and topic mapping.
    pub dapr: Arc<DaprPubsubs>,
    /// The Dapr apps whose subscriptions are read.
    pub dapr_apps: Arc<AppSubscriptions>,
    /// The health of the Dapr apps whose health is checked.
    pub app_health: Arc<crate::webhook::dapr::health::AppHealth>,
    /// The delivery runtime (subscriptions, stats).
    pub delivery: Arc<Runtime>,
    /// The PostgreSQL event store, when configured.
    pub eventstore: Option<Arc<crate::eventstore::EventStore>>,
    /// Replays out of it.
    pub replays: Option<Arc<crate::eventstore::replay::Replays>>,
    /// The watched parts (readiness names those down).
    pub health: Arc<crate::health::Health>,
    /// Histograms and counters (`/metrics`, `/v1/stats`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The dashboard's timeline.
    pub timeline: ui::Timeline,
    /// A connection for control commands (readiness).
    pub control: ConnectionManager,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Longest wait for a request body.
    pub body_read_timeout: Duration,
    /// Longest a readiness PING may take.
    pub ready_timeout: Duration,
}

/// The API's router: every path and its handler.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/publish/{topic}", post(publish::publish))
        .route(
            "/v1/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/v1/subscriptions/{name}",
            get(subscriptions::get)
                .put(subscriptions::put)
                .delete(subscriptions::delete),
        )
        .route(
            "/v1/subscriptions/{name}/secret",
            post(subscriptions::rotate_secret),
        )
        .route(
            "/v1/subscriptions/{name}/rewind",
            post(subscriptions::rewind),
        )
        .route("/v1/dlq/{name}", get(dlq::list).delete(dlq::purge))
        .route("/v1/dlq/{name}/replay", post(dlq::redrive))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/replay", post(replays::start))
        .route(
            "/v1/replays/{id}",
            get(replays::status).delete(replays::cancel),
        )
        .route("/v1/replays/{id}/resume", post(replays::resume))
        .route("/v1/subjects/{subject}/export", get(subjects::export))
        .route("/v1/subjects/{subject}/erase", post(subjects::erase))
        .route("/v1/events", get(events::list))
        .route("/v1/events/{event_id}", get(events::one))
        .route("/v1/traces/{correlation_id}", get(events::trace))
        .route("/metrics", get(metrics::metrics))
        .merge(ui::assets::router())
        .route("/v1/dashboard", get(ui::data))
        .route("/v1/audit", get(audit::list))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(dapr::router())
        .fallback(|OriginalUri(uri): OriginalUri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The names of the verified client certificate of a TLS connection.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Vec<String>);

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// A connection must send a full request head within this time.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may finish after shutdown begins (the shutdown budget).
    pub grace: Duration,
    /// The open-connection slots, shared with the Dapr gRPC listener.
    pub connections: limits::ConnectionSlots,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish within the grace period, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServeSettings,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let header_read_timeout = settings.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        // Waiting for a free connection slot must not hide a shutdown.
        let slot = tokio::select! {
            slot = settings.connections.acquire() => match slot {
                Some(slot) => slot,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Extension(ClientAddr(peer)).layer(app.clone());
                let Some(tls) = &tls else {
                    let service = TowerToHyperService::new(app);
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                        drop(slot);
                    });
                    continue;
                };
                // The handshake happens in the connection's task, bounded like a request
                // head, so that a slow client holds up no other.
                let acceptor = tls.acceptor.clone();
                let watcher = graceful.watcher();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        header_read_timeout,
                        acceptor.accept(stream),
                    );
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let names = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(tls::certificate_names);
                    let service = match names {
                        Some(names) => TowerToHyperService::new(Extension(ClientCert(names)).layer(app)),
                        None => TowerToHyperService::new(Extension(ClientCert(Vec::new())).layer(app)),
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(conn).await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections");
    if tokio::time::timeout(settings.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?settings.grace, "grace period ended with requests still in flight");
    }
}
