//! Connections to PostgreSQL: pools, and TLS when the URL says `sslmode=require` or a CA
//! is given.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::EventStoreError;
use crate::config::EventStoreConfig;

/// TLS to PostgreSQL: used when the URL says `sslmode=require` or a CA is given; the
/// server's certificate and name are always verified.
pub(super) struct Tls {
    config: Option<rustls::ClientConfig>,
}

impl Tls {
    pub(super) fn of(config: &EventStoreConfig) -> Result<Self, EventStoreError> {
        let wanted = config.tls_ca.is_some()
            || [&config.url, &config.keys_url]
                .into_iter()
                .flatten()
                .any(|url| {
                    url.parse::<tokio_postgres::Config>()
                        .is_ok_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Require)
                });
        if !wanted {
            return Ok(Self { config: None });
        }
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                EventStoreError::Config(format!("eventstore.{key} `{}`: {e}", path.display()))
            })
        };
        let ca = config
            .tls_ca
            .as_deref()
            .map(|p| read("tls_ca", p))
            .transpose()?;
        let pair = match (&config.tls_client_cert, &config.tls_client_key) {
            (Some(cert), Some(key)) => {
                Some((read("tls_client_cert", cert)?, read("tls_client_key", key)?))
            }
            _ => None,
        };
        let client = crate::store::tls_client_config(
            ca.as_deref(),
            pair.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .map_err(|e| EventStoreError::Config(format!("eventstore {e}")))?;
        Ok(Self {
            config: Some(client),
        })
    }
}

/// A pool of at most `size` connections to `url`; nothing is connected yet.
pub(super) fn pool_of(url: &str, size: usize, tls: &Tls) -> Result<Pool, EventStoreError> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| EventStoreError::Config(e.to_string()))?;
    let config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &tls.config {
        Some(tls) => Manager::from_config(
            pg,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()),
            config,
        ),
        None => Manager::from_config(pg, tokio_postgres::NoTls, config),
    };
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| EventStoreError::Config(e.to_string()))
}
