//! An evrouter with authentication on: three principals (a publisher of `order.>`, a
//! subscriber of `order.>`, an admin) and a way to call it as any of them.

use reqwest::Method;
use serde_json::Value;

use super::{
    client, hash_token, test_config, AuthConfig, AuthMode, PrincipalConfig, RedisServer, RouterApi,
    TestRouter,
};

pub const PUBLISHER: &str = "publisher-token";
pub const SUBSCRIBER: &str = "subscriber-token";
pub const ADMIN: &str = "admin-token";

/// The callers of the matrix, in its column order.
pub const CALLERS: [(&str, Option<&str>); 5] = [
    ("anonymous", None),
    ("wrong token", Some("not-a-token")),
    ("publisher", Some(PUBLISHER)),
    ("subscriber", Some(SUBSCRIBER)),
    ("admin", Some(ADMIN)),
];

pub fn principal(name: &str, token: &str) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        token_sha256: Some(hash_token(token)),
        ..PrincipalConfig::default()
    }
}

pub async fn secured_router() -> (RedisServer, TestRouter) {
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
pub async fn call(
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
