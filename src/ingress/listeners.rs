//! The listeners: the certificate loaded and every listener bound before anything starts
//! ([`Listeners::bind`]), then served ([`Listeners::serve`]) until shutdown begins, when
//! they stop accepting and let the requests in flight finish within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::dapr::grpc_serve::{self, GrpcSettings};
use super::limits::{self, ConnectionSlots};
use super::tls::{Tls, TlsError};
use super::{router, serve, AppState, ServeSettings};
use crate::config::Config;

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An address could not be bound.
    #[error("cannot listen on {key} {address}: {error}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
}

/// The HTTP(S) listener and the Dapr gRPC one, bound, and the certificate, loaded.
pub struct Listeners {
    http: TcpListener,
    grpc: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
    connections: ConnectionSlots,
}

/// The tasks of the listeners being served.
pub struct Serving {
    /// Reloads the certificate when its files change (HTTPS only).
    pub reloader: Option<JoinHandle<()>>,
    /// The Dapr gRPC listener, when `dapr.grpc_listen` names an address.
    pub grpc: Option<JoinHandle<()>>,
    /// The HTTP(S) listener.
    pub http: JoinHandle<()>,
}

impl Listeners {
    /// Loads the certificate (`[server.tls]`) and binds the Dapr gRPC listener beside
    /// `http`; raises the file-descriptor limit for `server.max_connections`.
    pub async fn bind(config: &Config, http: TcpListener) -> Result<Self, ListenError> {
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(Tls::new(tls)?)),
            None => None,
        };
        limits::check_descriptors(
            config.server.max_connections,
            config.delivery.max_subscriptions,
        );
        let grpc = match config.dapr.grpc_listen.parse::<SocketAddr>() {
            Ok(address) => {
                Some(
                    TcpListener::bind(address)
                        .await
                        .map_err(|error| ListenError::Bind {
                            key: "dapr.grpc_listen",
                            address,
                            error,
                        })?,
                )
            }
            Err(_) => None,
        };
        Ok(Self {
            http,
            grpc,
            tls,
            connections: ConnectionSlots::new(config.server.max_connections),
        })
    }

    /// The HTTP listener's address, for the log.
    pub fn address(&self) -> String {
        self.http
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Serves `app` on every listener until the future `shutdown()` makes completes.
    pub fn serve<F>(self, config: &Config, app: Arc<AppState>, shutdown: impl Fn() -> F) -> Serving
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let reloader = self.tls.as_ref().map(Tls::spawn_reloader);
        let grpc = self.grpc.map(|listener| {
            let settings = GrpcSettings::new(config, self.connections.clone());
            tokio::spawn(grpc_serve::serve(
                listener,
                app.clone(),
                settings,
                shutdown(),
            ))
        });
        let settings = ServeSettings {
            header_read_timeout: config.server.header_read_timeout.get(),
            grace: config.server.shutdown_budget.get(),
            connections: self.connections,
        };
        let http = tokio::spawn(serve(
            self.http,
            router(app),
            settings,
            self.tls,
            shutdown(),
        ));
        Serving {
            reloader,
            grpc,
            http,
        }
    }
}
