//! JWT bearer tokens: ES256 tokens checked against a configured public key, HS256 against a
//! secret from the environment; the principal from `sub`, its rights from the config or
//! from a rights claim; expired, foreign and missing tokens answered 401.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    client, order_event, test_config, AuthConfig, AuthMode, JwtConfig, PrincipalConfig,
    RedisServer, RouterApi, TestRouter,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn publish(router: &TestRouter, topic: &str, token: Option<&str>) -> u16 {
    let mut request = client()
        .post(router.url(&format!("/v1/publish/{topic}")))
        .json(&order_event(1, "ord_1"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("publish").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_name_principals_and_carry_rights() {
    let dir = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let public = dir.path().join("jwt.pem");
    std::fs::write(&public, key.public_key_pem()).expect("public key");
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("signing key");
    let other = rcgen::KeyPair::generate().expect("another key");
    let foreign = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).expect("foreign key");
    std::env::set_var("EVR_TEST_JWT_SECRET", "a-shared-secret-for-hs256");

    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.auth = AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            public_keys: vec![public],
            hs256_secret_env: Some("EVR_TEST_JWT_SECRET".into()),
            issuer: Some("platform-idp".into()),
            rights_claim: Some("evr".into()),
            ..JwtConfig::default()
        },
        principals: vec![PrincipalConfig {
            name: "order-service".into(),
            publish: vec!["order.>".into()],
            ..PrincipalConfig::default()
        }],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;

    let es256 = |claims: Value, key: &EncodingKey| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, key).expect("token")
    };
    let order = es256(
        json!({"sub": "order-service", "iss": "platform-idp", "exp": now() + 300}),
        &signing,
    );
    assert_eq!(publish(&router, "order.created", Some(&order)).await, 200);
    assert_eq!(
        publish(&router, "payment.captured", Some(&order)).await,
        403
    );

    let expired = es256(
        json!({"sub": "order-service", "iss": "platform-idp", "exp": now() - 600}),
        &signing,
    );
    assert_eq!(publish(&router, "order.created", Some(&expired)).await, 401);
    let wrong_issuer = es256(
        json!({"sub": "order-service", "iss": "elsewhere", "exp": now() + 300}),
        &signing,
    );
    assert_eq!(
        publish(&router, "order.created", Some(&wrong_issuer)).await,
        401
    );
    let forged = es256(
        json!({"sub": "order-service", "iss": "platform-idp", "exp": now() + 300}),
        &foreign,
    );
    assert_eq!(publish(&router, "order.created", Some(&forged)).await, 401);
    assert_eq!(publish(&router, "order.created", None).await, 401);
    assert_eq!(
        publish(&router, "order.created", Some("not.a.jwt")).await,
        401
    );

    // A principal the config does not list takes its rights from the token's claim.
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "payment-service", "iss": "platform-idp", "exp": now() + 300,
                "evr": {"publish": ["payment.>"]}}),
        &EncodingKey::from_secret(b"a-shared-secret-for-hs256"),
    )
    .expect("token");
    assert_eq!(
        publish(&router, "payment.captured", Some(&hs256)).await,
        200
    );
    assert_eq!(publish(&router, "order.created", Some(&hs256)).await, 403);
}
