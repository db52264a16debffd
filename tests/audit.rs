//! The audit log over the real API and CLI: every change and every refusal recorded with
//! who, what, from where and how it ended; readable by admins only, filtered by principal
//! and time.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::secured::{call, secured_router, ADMIN, SUBSCRIBER};
use support::{client, hash_token, RedisServer, RouterApi};

/// One request of a test and the status it must answer: method, path, token, body.
type Step<'a> = (Method, &'a str, Option<&'a str>, Option<Value>, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_refusals_are_in_the_audit_log() {
    let (_redis, router) = secured_router().await;
    let own =
        json!({"name": "audited", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    // Each step and the status it must answer; reading is not a change and is not audited.
    let steps: Vec<Step> = vec![
        (
            Method::POST,
            "/v1/subscriptions",
            Some(SUBSCRIBER),
            Some(own),
            201,
        ),
        (
            Method::DELETE,
            "/v1/dlq/audited",
            Some(SUBSCRIBER),
            None,
            403,
        ),
        (Method::GET, "/v1/subscriptions", Some("stolen"), None, 401),
        (Method::DELETE, "/v1/dlq/audited", Some(ADMIN), None, 200),
        (
            Method::GET,
            "/v1/subscriptions/audited",
            Some(SUBSCRIBER),
            None,
            200,
        ),
    ];
    for (method, path, token, body, status) in steps {
        let response = call(&router, method.clone(), path, token, body, false).await;
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
    }

    let response = call(
        &router,
        Method::GET,
        "/v1/audit",
        Some(SUBSCRIBER),
        None,
        false,
    )
    .await;
    assert_eq!(
        response.status().as_u16(),
        403,
        "only admins read the audit log"
    );
    let log: Value = call(&router, Method::GET, "/v1/audit", Some(ADMIN), None, false)
        .await
        .json()
        .await
        .expect("json");
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    let seen: Vec<(String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["principal"].as_str().unwrap_or_default().to_string(),
                e["action"].as_str().unwrap_or_default().to_string(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("shipping-service", "POST /v1/subscriptions", 201),
        ("shipping-service", "DELETE /v1/dlq/{name}", 403),
        ("-", "GET /v1/subscriptions", 401),
        ("ops", "DELETE /v1/dlq/{name}", 200),
        // The refused read of the log itself.
        ("shipping-service", "GET /v1/audit", 403),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(p, a, s)| (p.to_string(), a.to_string(), *s))
        .collect();
    assert_eq!(seen, expected, "{log}");
    for entry in &entries {
        assert!(
            entry["address"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1:"),
            "{entry}"
        );
        assert!(entry["at_ms"].as_u64().unwrap_or(0) > 0, "{entry}");
    }
    let only: Value = call(
        &router,
        Method::GET,
        "/v1/audit?principal=ops&since=2020-01-01T00:00:00Z",
        Some(ADMIN),
        None,
        false,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(only["entries"].as_array().map(Vec::len), Some(1), "{only}");
    let bad = call(
        &router,
        Method::GET,
        "/v1/audit?since=yesterday",
        Some(ADMIN),
        None,
        false,
    )
    .await;
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_audit_log_and_dlqs_with_a_token() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"token\"\n[[auth.principals]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nadmin = true\n",
            hash_token(ADMIN)
        ),
    )
    .expect("config");
    let router = support::process::RouterProcess::start(&redis, Some(&config)).await;
    let sub = json!({"name": "cli", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    let response = client()
        .post(router.url("/v1/subscriptions"))
        .bearer_auth(ADMIN)
        .json(&sub)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status().as_u16(), 201);
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_evrouter"));
        command.args(args).args(["--router", &router.base]);
        if let Some(token) = token {
            command.env("EVR_TOKEN", token);
        }
        command.output().expect("run")
    };
    let output = run(&["audit", "--principal", "ops"], Some(ADMIN));
    assert!(output.status.success(), "{output:?}");
    let log: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        log["entries"][0]["action"], "POST /v1/subscriptions",
        "{log}"
    );
    let output = run(&["dlq", "list", "--subscription", "cli"], Some(ADMIN));
    assert!(output.status.success(), "{output:?}");
    let output = run(&["dlq", "list", "--subscription", "cli"], None);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("401"),
        "{output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_is_audited() {
    let (_redis, router) = secured_router().await;
    let sub = json!({"name": "kept", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    let steps: Vec<(Method, &str, Option<Value>, u16)> = vec![
        (Method::POST, "/v1/subscriptions", Some(sub.clone()), 201),
        (Method::PUT, "/v1/subscriptions/kept", Some(sub), 200),
        (Method::POST, "/v1/subscriptions/kept/secret", None, 200),
        (Method::POST, "/v1/dlq/kept/replay", None, 200),
        (Method::DELETE, "/v1/dlq/kept", None, 200),
        (Method::POST, "/v1/dapr/apps/none/refresh", None, 404),
        (Method::DELETE, "/v1/subscriptions/kept", None, 204),
    ];
    for (method, path, body, status) in &steps {
        let response = call(
            &router,
            method.clone(),
            path,
            Some(ADMIN),
            body.clone(),
            false,
        )
        .await;
        assert_eq!(response.status().as_u16(), *status, "{method} {path}");
    }
    let log: Value = call(
        &router,
        Method::GET,
        "/v1/audit?principal=ops",
        Some(ADMIN),
        None,
        false,
    )
    .await
    .json()
    .await
    .expect("json");
    let actions: Vec<(String, u64)> = log["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("POST /v1/subscriptions", 201),
        ("PUT /v1/subscriptions/{name}", 200),
        ("POST /v1/subscriptions/{name}/secret", 200),
        ("POST /v1/dlq/{name}/replay", 200),
        ("DELETE /v1/dlq/{name}", 200),
        ("POST /v1/dapr/apps/{id}/refresh", 404),
        ("DELETE /v1/subscriptions/{name}", 204),
    ]
    .iter()
    .map(|(a, s)| (a.to_string(), *s))
    .collect();
    assert_eq!(actions, expected, "{log}");
}

/// The principals of `secured_router`, on `redis`, with the audit bounds a test sets.
fn secured_config(redis: &RedisServer) -> support::Config {
    use support::secured::{principal, PUBLISHER};
    use support::{AuthConfig, AuthMode, PrincipalConfig};
    let mut config = support::test_config(redis);
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![
            PrincipalConfig {
                publish: vec!["order.>".into()],
                ..principal("order-service", PUBLISHER)
            },
            PrincipalConfig {
                subscribe: vec!["order.>".into()],
                ..principal("shipping-service", SUBSCRIBER)
            },
            PrincipalConfig {
                admin: true,
                ..principal("ops", ADMIN)
            },
        ],
        ..AuthConfig::default()
    };
    config
}

/// Every entry of the audit log, page by page.
async fn whole_log(router: &support::TestRouter) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut path = "/v1/audit?limit=1000".to_string();
    loop {
        let page: Value = call(router, Method::GET, &path, Some(ADMIN), None, false)
            .await
            .json()
            .await
            .expect("json");
        entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/audit?limit=1000&after={next}"),
            None => return entries,
        }
    }
}

/// The value of the sample of `name` whose labels hold every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A flood of requests with a wrong token over several keep-alive connections cannot
/// push an admin's action or an earlier refusal out of the audit log, however small its
/// bound: refusals are kept apart and counted per caller and reason, and their counts add
/// up to the requests sent (in the log and in the metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_leaves_every_action_in_the_audit_log() {
    const CONNECTIONS: usize = 4;
    const PER_CONNECTION: usize = 750;
    let redis = RedisServer::start();
    let mut config = secured_config(&redis);
    // Small enough that a few thousand entries of any kind would trim the stream.
    config.audit.max_entries = 100;
    config.audit.max_refusals = 100;
    config.audit.refusal_interval = "1s".into();
    let router = support::TestRouter::start(config).await;
    let spec =
        json!({"name": "flooded", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    let before: Vec<Step> = vec![
        (
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN),
            Some(spec),
            201,
        ),
        (
            Method::DELETE,
            "/v1/dlq/flooded",
            Some(SUBSCRIBER),
            None,
            403,
        ),
        (
            Method::DELETE,
            "/v1/subscriptions/flooded",
            Some(ADMIN),
            None,
            204,
        ),
    ];
    for (method, path, token, body, status) in before {
        let response = call(&router, method.clone(), path, token, body, false).await;
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
    }

    // The flood: each connection a client of its own, kept alive between its requests.
    let url = router.url("/v1/subscriptions");
    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                for _ in 0..PER_CONNECTION {
                    let status = http
                        .get(&url)
                        .bearer_auth("not-a-token")
                        .send()
                        .await
                        .expect("request")
                        .status();
                    assert_eq!(status, 401);
                }
            })
        })
        .collect();
    for flood in floods {
        flood.await.expect("flood");
    }
    let sent = (CONNECTIONS * PER_CONNECTION) as u64;

    // The actions and the earlier refusal are all still there.
    let has = |entries: &[Value], principal: &str, action: &str, status: u64| {
        entries
            .iter()
            .any(|e| e["principal"] == principal && e["action"] == action && e["status"] == status)
    };
    let right_after = whole_log(&router).await;
    for (principal, action, status) in [
        ("ops", "POST /v1/subscriptions", 201),
        ("ops", "DELETE /v1/subscriptions/{name}", 204),
        ("shipping-service", "DELETE /v1/dlq/{name}", 403),
    ] {
        assert!(
            has(&right_after, principal, action, status),
            "{principal} {action} {status} still listed after the flood ({} entries): {:?}",
            right_after.len(),
            right_after.iter().take(5).collect::<Vec<_>>()
        );
    }

    // Once the interval has ended, the flood is in the log as counts adding up to it.
    let entries = support::eventually(std::time::Duration::from_secs(20), async || {
        let entries = whole_log(&router).await;
        let counted: u64 = entries
            .iter()
            .filter(|e| e["principal"] == "-" && e["status"] == 401)
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum();
        if counted == sent {
            Ok(entries)
        } else {
            Err(format!("{counted} of {sent} refusals counted"))
        }
    })
    .await;
    assert!(
        has(&entries, "shipping-service", "DELETE /v1/dlq/{name}", 403),
        "{entries:?}"
    );
    let flood: Vec<&Value> = entries.iter().filter(|e| e["principal"] == "-").collect();
    assert!(
        flood.len() as u64 * 10 <= sent,
        "{} entries for {sent} refusals",
        flood.len()
    );
    assert_eq!(
        flood.iter().filter(|e| e["kind"] == "refusal").count(),
        flood.len() - flood.iter().filter(|e| e["kind"] == "refusals").count(),
        "each entry a refusal in full or a count: {flood:?}"
    );
    for entry in &flood {
        assert_eq!(entry["action"], "GET /v1/subscriptions", "{entry}");
        assert!(
            entry["address"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1:"),
            "{entry}"
        );
        if entry["kind"] == "refusals" {
            assert!(
                entry["from_ms"].as_u64() <= entry["at_ms"].as_u64(),
                "{entry}"
            );
        }
    }
    // The log is in time order across actions and refusals.
    let times: Vec<u64> = entries
        .iter()
        .map(|e| e["at_ms"].as_u64().unwrap_or(0))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    let metrics = call(&router, Method::GET, "/metrics", Some(ADMIN), None, false)
        .await
        .text()
        .await
        .expect("metrics");
    let refused = |reason: &str| {
        sample(
            &metrics,
            "evrouter_requests_refused_total",
            &[&format!("reason=\"{reason}\""), "api=\"http\""],
        )
    };
    assert_eq!(refused("unauthenticated"), Some(sent as f64), "{metrics}");
    assert_eq!(refused("forbidden"), Some(1.0), "{metrics}");
    router.stop().await.expect("clean stop");
}

/// Refusals on the Dapr gRPC API are audited as on HTTP: a wrong `dapr-api-token`, and a
/// publish to a topic the principal may not publish to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refusals_are_in_the_audit_log() {
    use dapr::dapr::proto::runtime::v1 as pb;
    use support::secured::PUBLISHER;
    let redis = RedisServer::start();
    let mut config = secured_config(&redis);
    let port = support::free_port();
    config.dapr.grpc_listen = format!("127.0.0.1:{port}");
    config.audit.refusal_interval = "1s".into();
    let router = support::TestRouter::start(config).await;
    let url = format!("http://127.0.0.1:{port}");
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = pb::dapr_client::DaprClient::connect(url.clone()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut client = client.expect("the gRPC API answers");
    let publish = |token: &str, topic: &str| {
        let mut request = tonic::Request::new(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            data: br#"{"n":1}"#.to_vec(),
            data_content_type: "application/json".into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("dapr-api-token", token.parse().expect("ascii"));
        request
    };
    let wrong = client
        .publish_event(publish("not-a-token", "orders"))
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    for _ in 0..3 {
        let denied = client
            .publish_event(publish(PUBLISHER, "payment.captured"))
            .await
            .expect_err("no right to publish there");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }
    let entries = support::eventually(std::time::Duration::from_secs(20), async || {
        let entries = whole_log(&router).await;
        let counted: u64 = entries
            .iter()
            .filter(|e| e["principal"] == "order-service")
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum();
        if counted == 3 {
            Ok(entries)
        } else {
            Err(format!("{counted} of 3 forbidden publishes: {entries:?}"))
        }
    })
    .await;
    let action = "gRPC dapr.proto.runtime.v1.Dapr/PublishEvent";
    let unauthenticated = entries
        .iter()
        .find(|e| e["principal"] == "-")
        .unwrap_or_else(|| panic!("the wrong token: {entries:?}"));
    assert_eq!(unauthenticated["action"], action);
    assert_eq!(unauthenticated["status"], 401);
    assert!(
        unauthenticated["address"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:"),
        "{unauthenticated}"
    );
    let forbidden: Vec<&Value> = entries
        .iter()
        .filter(|e| e["principal"] == "order-service")
        .collect();
    assert_eq!(forbidden[0]["kind"], "refusal", "{forbidden:?}");
    assert_eq!(forbidden[0]["status"], 403);
    assert_eq!(forbidden[0]["action"], action);
    assert_eq!(forbidden[0]["target"], "pubsub/payment.captured");
    router.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_out_of_the_order_they_were_made_read_back_in_time_order() {
    // Two requests make their entries a millisecond apart and the later one reaches Redis
    // first: the log gives each the time it was recorded, so its times never go back.
    use evrouter::model::audit::AuditEntry;
    use evrouter::store::audit::AuditLog;
    let redis = RedisServer::start();
    let conn = redis::Client::open(redis.url())
        .expect("client")
        .get_connection_manager()
        .await
        .expect("connection");
    let log = AuditLog::new(conn, "evr", std::time::Duration::from_secs(3600), (9, 9));
    let made = |at_ms: u64, principal: &str, status: u16| AuditEntry {
        at_ms,
        principal: principal.into(),
        action: "DELETE /v1/subscriptions/{name}".into(),
        status,
        ..AuditEntry::default()
    };
    let now = evrouter::model::clock::now_ms();
    log.append(&made(now + 5_000, "later", 204))
        .await
        .expect("append");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    log.append(&made(now, "earlier", 204))
        .await
        .expect("append");
    log.append(&made(now - 5_000, "-", 401))
        .await
        .expect("append");
    let entries = log.read(0, None, None, 100).await.expect("read");
    let order: Vec<&str> = entries.iter().map(|e| e.principal.as_str()).collect();
    assert_eq!(
        order,
        ["later", "earlier", "-"],
        "the log is in written order"
    );
    let times: Vec<u64> = entries.iter().map(|e| e.at_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for entry in &entries {
        let id_ms: u64 = entry
            .id
            .trim_start_matches('r')
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .expect("an id's time");
        assert_eq!(entry.at_ms, id_ms, "{entry:?}");
    }
}
