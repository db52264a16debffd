//! HTTPS with certificates made in the test (rcgen): the listener serves TLS; with a client
//! CA required, a client without a certificate is refused at the handshake, and one with a
//! certificate named in a principal's `cert_names` is that principal (rights included,
//! without a token); a new certificate written over the files is served to new
//! connections without dropping the open ones.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use support::{
    eventually, order_event, test_config, AuthConfig, AuthMode, PrincipalConfig, RedisServer,
    TestRouter,
};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "evrouter test CA");
    let cert = params.self_signed(&key).expect("ca");
    Ca { cert, key }
}

/// A certificate for `names` (the first also as the common name), signed by `ca`: PEM of
/// the certificate and of its key.
fn issue(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn client(ca: &Ca, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).expect("root"),
        );
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certificates_and_reloads() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ca();
    let (server_cert, server_key) = issue(&ca, &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = issue(&ca, &["order-service"]);
    let cert_path = write(dir.path(), "server.pem", &server_cert);
    let key_path = write(dir.path(), "server.key", &server_key);
    let ca_path = write(dir.path(), "ca.pem", &ca.cert.pem());

    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.server.tls = Some(evrouter::config::TlsConfig {
        cert: cert_path.clone(),
        key: key_path.clone(),
        client_ca: Some(ca_path),
        require_client_cert: true,
    });
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![PrincipalConfig {
            name: "order-service".into(),
            cert_names: vec!["order-service".into()],
            publish: vec!["order.>".into()],
            ..PrincipalConfig::default()
        }],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;
    let port: u16 = router
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let base = format!("https://localhost:{port}");

    // Without a client certificate the handshake is refused.
    let anonymous = client(&ca, None);
    assert!(anonymous
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());

    let service = client(&ca, Some((&client_cert, &client_key)));
    let health = service
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    // The certificate names the principal: its rights apply without a token.
    let published = service
        .post(format!("{base}/v1/publish/order.created"))
        .json(&order_event(1, "ord_1"))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status().as_u16(), 200);
    let refused = service
        .post(format!("{base}/v1/publish/payment.captured"))
        .json(&order_event(2, "ord_2"))
        .send()
        .await
        .expect("publish");
    assert_eq!(refused.status().as_u16(), 403);

    // A new certificate over the files: new connections get it, the open one goes on.
    assert_eq!(
        served_name(&ca, &client_cert, &client_key, port).await,
        "localhost"
    );
    let (renewed_cert, renewed_key) = issue(&ca, &["localhost-renewed", "localhost", "127.0.0.1"]);
    std::fs::write(&key_path, renewed_key).expect("key");
    std::fs::write(&cert_path, renewed_cert).expect("cert");
    eventually(Duration::from_secs(15), async || {
        let seen = served_name(&ca, &client_cert, &client_key, port).await;
        if seen == "localhost-renewed" {
            Ok(())
        } else {
            Err(format!("still serving {seen}"))
        }
    })
    .await;
    let again = service
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(again.status().as_u16(), 200);
}

/// The common name of the certificate the server presents to a new connection.
async fn served_name(ca: &Ca, cert: &str, key: &str, port: u16) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            ca.cert.der().to_vec(),
        ))
        .expect("root");
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certs");
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .expect("client cert");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let certs = stream.get_ref().1.peer_certificates().expect("certs");
    let (_, parsed) = x509_parser::parse_x509_certificate(certs[0].as_ref()).expect("x509");
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_over_https_are_checked_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ca();
    let (cert, key) = issue(&ca, &["localhost"]);
    let ca_path = write(dir.path(), "ca.pem", &ca.cert.pem());

    // An HTTPS subscriber: every request's body is kept.
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certs");
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, kept) = (acceptor.clone(), kept.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            kept.lock()
                                .expect("kept")
                                .push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.webhooks.ca = Some(ca_path);
    config.webhooks.allow.push("localhost".into());
    let router = TestRouter::start(config).await;
    let (status, created) = support::RouterApi::post(
        &router,
        "/v1/subscriptions",
        "application/json",
        serde_json::json!({"name": "secure", "topics": ["order.created"], "endpoints": [format!("https://localhost:{port}/events")]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    support::RouterApi::publish_ok(&router, "order.created", &order_event(1, "ord_1")).await;
    let got = eventually(Duration::from_secs(10), async || {
        let got = received.lock().expect("kept").clone();
        if got.is_empty() {
            Err("nothing delivered over https yet".to_string())
        } else {
            Ok(got)
        }
    })
    .await;
    assert!(got[0].contains("evt_order_1"), "{got:?}");
}
