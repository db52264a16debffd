//! Identities and rights over the real API: every endpoint against every kind of caller
//! (no token, a wrong token, a publisher, a subscriber, an admin), native and Dapr paths,
//! with the status each must answer; 401s carry `WWW-Authenticate`, 403s name what
//! refused them, and subscriptions record their owner.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::order_event;
use support::secured::{call, secured_router, ADMIN, CALLERS, PUBLISHER, SUBSCRIBER};

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
        row(Method::GET, "/metrics", None, [401, 401, 403, 403, 200]),
        row(
            Method::GET,
            "/v1/dashboard",
            None,
            [401, 401, 403, 403, 200],
        ),
        row(Method::GET, "/ui", None, [200, 200, 200, 200, 200]),
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
