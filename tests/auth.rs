//! Identities and rights over the real API: every endpoint against every kind of caller
//! (no token, a wrong token, a publisher, a subscriber, an admin), native and Dapr paths,
//! with the status each must answer; 401s carry `WWW-Authenticate`, 403s name what
//! refused them, and subscriptions record their owner.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{
    client, hash_token, order_event, test_config, AuthConfig, AuthMode, PrincipalConfig,
    RedisServer, RouterApi, TestRouter,
};

const PUBLISHER: &str = "publisher-token";
const SUBSCRIBER: &str = "subscriber-token";
const ADMIN: &str = "admin-token";

/// The callers of the matrix, in its column order.
const CALLERS: [(&str, Option<&str>); 5] = [
    ("anonymous", None),
    ("wrong token", Some("not-a-token")),
    ("publisher", Some(PUBLISHER)),
    ("subscriber", Some(SUBSCRIBER)),
    ("admin", Some(ADMIN)),
];

fn principal(name: &str, token: &str) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        token_sha256: Some(hash_token(token)),
        ..PrincipalConfig::default()
    }
}

async fn secured_router() -> (RedisServer, TestRouter) {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
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
    let router = TestRouter::start(config).await;
    (redis, router)
}

/// Sends one request as `token` (as a bearer token, or Dapr's header when `dapr`).
async fn call(
    router: &TestRouter,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    dapr: bool,
) -> reqwest::Response {
    let mut request = client().request(method, router.url(path));
    if let Some(token) = token {
        request = if dapr {
            request.header("dapr-api-token", token)
        } else {
            request.bearer_auth(token)
        };
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// One row of the matrix: the statuses expected from each caller, in `CALLERS` order.
struct Row {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    dapr: bool,
    expected: [u16; 5],
}

fn row(method: Method, path: &'static str, body: Option<Value>, expected: [u16; 5]) -> Row {
    Row {
        method,
        path,
        body,
        dapr: false,
        expected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_caller_as_its_rights_say() {
    let (_redis, router) = secured_router().await;
    // The subscriber's own subscription, for the rows that read or change it.
    let own =
        json!({"name": "shipping", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    let response = call(
        &router,
        Method::POST,
        "/v1/subscriptions",
        Some(SUBSCRIBER),
        Some(own),
        false,
    )
    .await;
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["owner"], "shipping-service", "{created}");

    let sub = |name: &str| json!({"name": name, "topics": ["order.created"], "endpoints": ["http://127.0.0.1:9/x"]});
    let rows = vec![
        row(Method::GET, "/healthz", None, [200, 200, 200, 200, 200]),
        row(Method::GET, "/readyz", None, [200, 200, 200, 200, 200]),
        row(
            Method::POST,
            "/v1/publish/order.created",
            Some(order_event(1, "ord_1")),
            [401, 401, 200, 403, 403],
        ),
        row(
            Method::POST,
            "/v1/publish/payment.captured",
            Some(order_event(2, "ord_2")),
            [401, 401, 403, 403, 403],
        ),
        Row {
            dapr: true,
            ..row(
                Method::POST,
                "/v1.0/publish/pubsub/order.created",
                Some(json!({"order_id": "ord_3"})),
                [401, 401, 204, 403, 403],
            )
        },
        row(
            Method::POST,
            "/v1.0-alpha1/publish/bulk/pubsub/order.created",
            Some(
                json!([{"entryId": "1", "event": {"order_id": "ord_4"}, "contentType": "application/json"}]),
            ),
            [401, 401, 204, 403, 403],
        ),
        row(
            Method::GET,
            "/v1.0/metadata",
            None,
            [401, 401, 200, 200, 200],
        ),
        row(
            Method::POST,
            "/v1/subscriptions",
            Some(sub("by-publisher")),
            [401, 401, 403, 201, 409],
        ),
        row(
            Method::GET,
            "/v1/subscriptions",
            None,
            [401, 401, 200, 200, 200],
        ),
        row(
            Method::GET,
            "/v1/subscriptions/shipping",
            None,
            [401, 401, 403, 200, 200],
        ),
        row(
            Method::PUT,
            "/v1/subscriptions/shipping",
            Some(json!({"topics": ["order.created"], "endpoints": ["http://127.0.0.1:9/y"]})),
            [401, 401, 403, 200, 200],
        ),
        row(
            Method::GET,
            "/v1/dlq/shipping",
            None,
            [401, 401, 403, 200, 200],
        ),
        row(
            Method::POST,
            "/v1/dlq/shipping/replay",
            None,
            [401, 401, 403, 200, 200],
        ),
        row(
            Method::DELETE,
            "/v1/dlq/shipping",
            None,
            [401, 401, 403, 403, 200],
        ),
        row(Method::GET, "/v1/stats", None, [401, 401, 403, 403, 200]),
        row(
            Method::POST,
            "/v1/dapr/apps/nothing/refresh",
            None,
            [401, 401, 403, 403, 404],
        ),
        row(
            Method::DELETE,
            "/v1/subscriptions/by-publisher",
            None,
            [401, 401, 403, 204, 404],
        ),
    ];
    let mut wrong = Vec::new();
    for row in &rows {
        for ((who, token), expected) in CALLERS.iter().zip(row.expected) {
            let response = call(
                &router,
                row.method.clone(),
                row.path,
                *token,
                row.body.clone(),
                row.dapr,
            )
            .await;
            let status = response.status().as_u16();
            if status == 401 {
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    challenge.starts_with("Bearer"),
                    "{} {} as {who}: 401 without a challenge",
                    row.method,
                    row.path
                );
            }
            if status != expected {
                let body = response.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{} {} as {who}: {status}, expected {expected}: {body}",
                    row.method, row.path
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_what_refused_them_and_owners_are_kept() {
    let (_redis, router) = secured_router().await;
    let response = call(
        &router,
        Method::POST,
        "/v1/publish/payment.captured",
        Some(PUBLISHER),
        Some(order_event(1, "ord_1")),
        false,
    )
    .await;
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "forbidden");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`order.>`") && message.contains("payment.captured"),
        "{message}"
    );

    // Reading wider than its rights, or giving a subscription to someone else, is refused.
    let wide = json!({"name": "all", "topics": [">"], "endpoints": ["http://127.0.0.1:9/x"]});
    let response = call(
        &router,
        Method::POST,
        "/v1/subscriptions",
        Some(SUBSCRIBER),
        Some(wide),
        false,
    )
    .await;
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`>`"),
        "{body}"
    );
    let gift = json!({"name": "gift", "topics": ["order.created"], "endpoints": ["http://127.0.0.1:9/x"], "owner": "ops"});
    let response = call(
        &router,
        Method::POST,
        "/v1/subscriptions",
        Some(SUBSCRIBER),
        Some(gift.clone()),
        false,
    )
    .await;
    assert_eq!(response.status().as_u16(), 403);
    // An admin may create one for another principal, which then manages it.
    let mut given = gift;
    given["owner"] = json!("shipping-service");
    let response = call(
        &router,
        Method::POST,
        "/v1/subscriptions",
        Some(ADMIN),
        Some(given),
        false,
    )
    .await;
    assert_eq!(response.status().as_u16(), 201);

    // Each non-admin lists only its own; the admin lists all.
    let own = json!({"name": "mine", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    assert_eq!(
        call(
            &router,
            Method::POST,
            "/v1/subscriptions",
            Some(SUBSCRIBER),
            Some(own),
            false
        )
        .await
        .status()
        .as_u16(),
        201
    );
    let listed: Vec<Value> = call(
        &router,
        Method::GET,
        "/v1/subscriptions",
        Some(SUBSCRIBER),
        None,
        false,
    )
    .await
    .json()
    .await
    .expect("json");
    assert!(
        listed.iter().all(|s| s["owner"] == "shipping-service"),
        "{listed:?}"
    );
    let names: Vec<&str> = listed.iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(
        names.contains(&"mine") && names.contains(&"gift"),
        "{names:?}"
    );
    let listed: Vec<Value> = call(
        &router,
        Method::GET,
        "/v1/subscriptions",
        Some(PUBLISHER),
        None,
        false,
    )
    .await
    .json()
    .await
    .expect("json");
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_refusals_are_in_the_audit_log() {
    let (_redis, router) = secured_router().await;
    let own =
        json!({"name": "audited", "topics": ["order.*"], "endpoints": ["http://127.0.0.1:9/x"]});
    let created = call(
        &router,
        Method::POST,
        "/v1/subscriptions",
        Some(SUBSCRIBER),
        Some(own),
        false,
    )
    .await;
    assert_eq!(created.status().as_u16(), 201);
    let refused = call(
        &router,
        Method::DELETE,
        "/v1/dlq/audited",
        Some(SUBSCRIBER),
        None,
        false,
    )
    .await;
    assert_eq!(refused.status().as_u16(), 403);
    let unknown = call(
        &router,
        Method::GET,
        "/v1/subscriptions",
        Some("stolen"),
        None,
        false,
    )
    .await;
    assert_eq!(unknown.status().as_u16(), 401);
    let purged = call(
        &router,
        Method::DELETE,
        "/v1/dlq/audited",
        Some(ADMIN),
        None,
        false,
    )
    .await;
    assert_eq!(purged.status().as_u16(), 200);
    // Reading is not a change: not audited.
    let read = call(
        &router,
        Method::GET,
        "/v1/subscriptions/audited",
        Some(SUBSCRIBER),
        None,
        false,
    )
    .await;
    assert_eq!(read.status().as_u16(), 200);

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
