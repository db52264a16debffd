//! Redis, and every command evrouter sends it: connections, the batched partition writers,
//! readers, acks and dead letters, leases, consumer groups, sequence state, DLQ pages,
//! retention trimming and the start-up durability check.

pub mod acks;
pub mod audit;
pub mod bounds;
pub mod dlq;
pub mod durability;
pub mod gauges;
pub mod groups;
pub mod lease;
pub mod reader;
pub mod replays;
pub mod restore;
pub mod retention;
pub mod sequence;
pub mod stream_conn;
pub mod subscriptions;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo};

pub use writer::{Appended, Entry, WriterPool};

/// Whether Redis answers: a PING.
pub async fn ping(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

/// `text` with the characters a `SCAN MATCH` pattern treats specially escaped.
pub fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Every key matching `pattern` (of Redis type `kind`, when given), walked with `SCAN`
/// so that Redis is never blocked by one long command.
pub async fn scan_keys(
    conn: &mut ConnectionManager,
    pattern: &str,
    kind: Option<&str>,
) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        if let Some(kind) = kind {
            cmd.arg("TYPE").arg(kind);
        }
        let (next, keys): (u64, Vec<String>) = cmd.query_async(conn).await?;
        found.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// A writer's queue is full.
    #[error("writer queue full")]
    Busy,
    /// Redis did not answer in time.
    #[error("redis did not answer within the timeout")]
    Timeout,
    /// evrouter is shutting down.
    #[error("shutting down")]
    Closed,
    /// Redis is out of memory (`maxmemory` reached under `noeviction`): nothing was
    /// written; acks and trimming free memory again.
    #[error("redis is full: {0}")]
    Full(String),
    /// Redis refused a command (a bug or a key of the wrong type).
    #[error("redis refused the write: {0}")]
    Refused(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        if err.is_timeout() {
            StoreError::Timeout
        } else if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
        {
            StoreError::Unavailable(err.to_string())
        } else if let Some(code) = err.code() {
            classify_server_error(code, &err.to_string())
        } else {
            StoreError::Unavailable(err.to_string())
        }
    }
}

/// Redis error codes that pass: the server is loading, busy, failing over or cannot
/// persist (out of memory is [`StoreError::Full`]). Anything else is a refusal that retrying will not fix.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "READONLY",
    "MISCONF",
    "NOREPLICAS",
];

/// Classifies a Redis error reply by its code.
pub fn classify_server_error(code: &str, text: &str) -> StoreError {
    if code == "OOM" {
        StoreError::Full(text.to_string())
    } else if TRANSIENT_CODES.contains(&code) {
        StoreError::Unavailable(text.to_string())
    } else {
        StoreError::Refused(text.to_string())
    }
}

/// TLS to Redis (`rediss://`): the CA and an optional client certificate, as PEM.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// The CA Redis's certificate chains to; none: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for a Redis that asks for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    /// The rustls configuration of the stream readers' own connections.
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, StoreError> {
        let client = self
            .client
            .as_ref()
            .map(|(c, k)| (c.as_slice(), k.as_slice()));
        tls_client_config(self.ca.as_deref(), client)
            .map(Arc::new)
            .map_err(|e| StoreError::Unavailable(format!("redis {e}")))
    }
}

/// A rustls client configuration (ring provider) trusting `ca` (PEM; none: the system's
/// roots), presenting `client` (certificate and key, PEM) when given. Shared by every
/// client TLS evrouter opens to its stores (Redis, PostgreSQL).
pub fn tls_client_config(
    ca: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| format!("TLS {what}: {e}");
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
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
    match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("client key", &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("client certificate", &e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// How to connect to Redis.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    client: Client,
    response_timeout: Duration,
    connect_timeout: Duration,
    /// TLS of the stream readers' own connections, for `rediss://`.
    stream_tls: Option<Arc<rustls::ClientConfig>>,
}

impl RedisTarget {
    /// Parses the URL (with `password`, when given, in place of the URL's) and sets
    /// TCP_NODELAY (the client leaves it off by default).
    pub fn new(
        url: &str,
        password: Option<&str>,
        tls: Option<&RedisTls>,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut info = url
            .into_connection_info()
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "bad redis url {}: {e}",
                    crate::model::redact::url(url)
                ))
            })?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let secure = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let (client, stream_tls) = if secure {
            let tls = tls.cloned().unwrap_or_default();
            let certificates = redis::TlsCertificates {
                client_tls: tls.client.clone().map(|(client_cert, client_key)| {
                    redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }
                }),
                root_cert: tls.ca.clone(),
            };
            let client = Client::build_with_tls(info, certificates)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            (client, Some(tls.client_config()?))
        } else {
            let client = Client::open(info).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            (client, None)
        };
        Ok(Self {
            client,
            response_timeout,
            connect_timeout,
            stream_tls,
        })
    }

    /// A reconnecting, multiplexed connection; it connects on first use.
    pub fn manager(&self) -> Result<ConnectionManager, StoreError> {
        self.manager_with_timeout(self.response_timeout)
    }

    /// Like [`RedisTarget::manager`], with its own response timeout (for blocking reads).
    pub fn manager_with_timeout(&self, timeout: Duration) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(StoreError::from)
    }

    /// A plain connection for a reader's `XREADGROUP`s, with its own response timeout.
    pub fn stream_conn(&self, timeout: Duration) -> stream_conn::StreamConn {
        stream_conn::StreamConn::new(
            self.client.get_connection_info().clone(),
            self.stream_tls.clone(),
            self.connect_timeout,
            timeout,
        )
    }

    /// The response timeout every ordinary command runs under.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }
}
