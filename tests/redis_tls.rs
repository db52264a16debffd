//! Redis over TLS (`rediss://`), with certificates made in the test: a `redis-server` that
//! listens only on a TLS port and requires client certificates; evrouter publishes,
//! reads (its hand-written stream reader included) and delivers through it.

mod support;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;
use support::subscriber::Subscriber;
use support::{free_port, order_event, test_config, RouterApi, TestRouter};

struct Tls {
    child: Child,
    port: u16,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pem_pair(
    params: CertificateParams,
    issuer: Option<(&rcgen::Certificate, &KeyPair)>,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let cert = match issuer {
        Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key).expect("sign"),
        None => params.self_signed(&key).expect("self-sign"),
    };
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evrouter_works_over_rediss_with_client_certificates() {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "evrouter redis CA");
    let (ca, ca_key) = pem_pair(ca_params, None);
    let (server, server_key) = pem_pair(
        CertificateParams::new(vec!["localhost".to_string()]).expect("params"),
        Some((&ca, &ca_key)),
    );
    let (client, client_key) = pem_pair(
        CertificateParams::new(vec!["evrouter".to_string()]).expect("params"),
        Some((&ca, &ca_key)),
    );
    let ca_path = write("ca.pem", ca.pem());
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(write("redis.pem", server.pem()))
        .arg("--tls-key-file")
        .arg(write("redis.key", server_key.serialize_pem()))
        .arg("--tls-ca-cert-file")
        .arg(&ca_path)
        .args([
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let redis = Tls { child, port };
    let mut up = false;
    for _ in 0..1200 {
        if TcpStream::connect(("127.0.0.1", redis.port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Debian's redis-server serves TLS; one built without it fails here, never skips.
    assert!(up, "redis-server did not listen on its TLS port");

    let subscriber = Subscriber::ok().await;
    let plain = support::RedisServer::start();
    let mut config = test_config(&plain);
    config.redis.url = format!("rediss://localhost:{port}");
    config.redis.tls_ca = Some(ca_path);
    config.redis.tls_client_cert = Some(write("client.pem", client.pem()));
    config.redis.tls_client_key = Some(write("client.key", client_key.serialize_pem()));
    let router = TestRouter::start(config).await;
    router
        .subscribe("secure", &["order.created"], &subscriber.url(), json!({}))
        .await;
    for i in 0..5 {
        router
            .publish_ok("order.created", &order_event(i, &format!("ord_{i}")))
            .await;
    }
    let got = subscriber.wait_for(5, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 5);
    let ready = router.get_json("/readyz").await;
    assert_eq!(ready["redis"], "ok", "{ready}");
}
