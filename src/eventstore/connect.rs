//! Connections to PostgreSQL: pools, and TLS when the URL says `sslmode=require` or a CA
//! is given.

use std::sync::Arc;
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
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            EventStoreError::Config(format!("eventstore TLS {what}: {e}"))
        };
        let mut roots = rustls::RootCertStore::empty();
        match &config.tls_ca {
            Some(path) => {
                for cert in CertificateDer::pem_slice_iter(&read("tls_ca", path)?) {
                    let cert = cert.map_err(|e| bad("CA", &e))?;
                    roots.add(cert).map_err(|e| bad("CA", &e))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("versions", &e))?
        .with_root_certificates(roots);
        let client = match (&config.tls_client_cert, &config.tls_client_key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_slice_iter(&read("tls_client_cert", cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("client certificate", &e))?;
                let key = PrivateKeyDer::from_pem_slice(&read("tls_client_key", key)?)
                    .map_err(|e| bad("client key", &e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad("client certificate", &e))?
            }
            _ => builder.with_no_client_auth(),
        };
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
