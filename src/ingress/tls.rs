//! HTTPS for the listener: rustls with the certificate and key from PEM files, read again
//! on SIGHUP or when either file changes (new handshakes use the new pair; connections
//! already open keep theirs), and optionally client certificates (mTLS) checked against a
//! CA, whose DNS names or subject common name can stand for a principal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::model::sync::{read, write};

/// How often the certificate files are looked at for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The config key at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The server's certificate, swapped in place when reloaded.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read(&self.current).clone())
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|found| found.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError {
            path: "server.tls.cert".into(),
            message: format!("{}: {e}", cert.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            path: "server.tls.cert".into(),
            message: format!("{} holds no certificate", cert.display()),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError {
        path: "server.tls.key".into(),
        message: format!("{}: {e}", key.display()),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError {
        path: "server.tls.key".into(),
        message: e.to_string(),
    })?;
    Ok(CertifiedKey::new(certs, signing))
}

/// An acceptor for the listener, and the task that reloads its certificate.
pub struct Tls {
    /// Accepts TLS connections.
    pub acceptor: TlsAcceptor,
    reloading: Arc<Reloading>,
    files: (PathBuf, PathBuf),
}

impl Tls {
    /// Reads the files of `config` and builds the acceptor.
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load_pair(&config.cert, &config.key)?;
        let reloading = Arc::new(Reloading {
            current: RwLock::new(Arc::new(pair)),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: "server.tls".into(),
                message: e.to_string(),
            })?;
        let builder = match &config.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .and_then(|found| found.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsError {
                        path: "server.tls.client_ca".into(),
                        message: format!("{}: {e}", ca.display()),
                    })?
                {
                    roots.add(cert).map_err(|e| TlsError {
                        path: "server.tls.client_ca".into(),
                        message: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if config.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier.build().map_err(|e| TlsError {
                    path: "server.tls.client_ca".into(),
                    message: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(reloading.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            reloading,
            files: (config.cert.clone(), config.key.clone()),
        })
    }

    /// Reads the certificate and key again; on failure the current pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.files.0, &self.files.1)?;
        *write(&self.reloading.current) = Arc::new(pair);
        Ok(())
    }

    /// Reloads on SIGHUP and when either file changes, until the task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut seen = tls.stamps();
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = signalled => {}
                    _ = tokio::time::sleep(WATCH_EVERY) => {
                        let now = tls.stamps();
                        if now == seen {
                            continue;
                        }
                        seen = now;
                    }
                }
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(err) => {
                        tracing::warn!(error = %err, "TLS certificate not reloaded; the current one stays")
                    }
                }
            }
        })
    }

    fn stamps(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let stamp = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (stamp(&self.files.0), stamp(&self.files.1))
    }
}

/// The DNS names and the subject common name of a client certificate.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    names
}
