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
