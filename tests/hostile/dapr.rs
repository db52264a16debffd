//! A tenant against the Dapr parts: a subscription that names a Dapr app to reach an
//! internal address or take an app's token, dead-letter topics used to publish without the
//! right or to make a loop, CloudEvents that slip past validation, and the metadata of
//! other apps.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::dapr_app::{app_config, stored_on, DaprApp};
use crate::support::secured::{call, principal};
use crate::support::subscriber::Subscriber;
use crate::support::{
    eventually, free_port, order_event, test_config, AuthConfig, AuthMode, PrincipalConfig,
    RedisServer, TestRouter,
};

const SHIPPING: &str = "shipping-token";
const OPS: &str = "ops-token";
const BILLING: &str = "billing-token";
const INVENTORY_APP: &str = "inventory-app-token";

/// Token mode with a subscriber of `order.>` (shipping) and an admin that may publish
/// anything (ops).
fn principals() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Token,
        principals: vec![
            PrincipalConfig {
                subscribe: vec!["order.>".into()],
                publish: vec!["shipping.>".into()],
                ..principal("shipping-service", SHIPPING)
            },
            PrincipalConfig {
                admin: true,
                publish: vec![">".into()],
                ..principal("ops", OPS)
            },
            PrincipalConfig {
                subscribe: vec!["order.>".into(), "shipping.>".into()],
                ..principal("billing-service", BILLING)
            },
        ],
        ..AuthConfig::default()
    }
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The attack as found: a subscriber creates a subscription whose `dapr` object points a
/// Dapr app's delivery at the cloud metadata service. It is refused with the path at
/// fault, for an admin too; and an internal endpoint is refused as for any webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_through_the_api_cannot_be_a_dapr_apps() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.webhooks.allow = Vec::new();
    config.auth = principals();
    let router = TestRouter::start(config).await;
    let hostile = json!({
        "name": "metadata-thief",
        "topics": ["order.>"],
        "endpoints": ["http://169.254.169.254"],
        "dapr": {"app_id": "inventory", "pubsubname": "pubsub", "topic": "order.created",
                 "default_path": "/latest/meta-data/"},
    });
    for token in [SHIPPING, OPS] {
        let (status, answer) = json_of(
            call(
                &router,
                Method::POST,
                "/v1/subscriptions",
                Some(token),
                Some(hostile.clone()),
                false,
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_subscription", "{answer}");
        assert_eq!(answer["error"]["details"][0]["path"], "/dapr", "{answer}");
        let (status, answer) = json_of(
            call(
                &router,
                Method::PUT,
                "/v1/subscriptions/metadata-thief",
                Some(token),
                Some(hostile.clone()),
                false,
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "PUT: {answer}");
    }
    let mut plain = hostile.clone();
    plain.as_object_mut().expect("object").remove("dapr");
    let (status, answer) = json_of(
        call(
            &router,
            Method::POST,
            "/v1/subscriptions",
            Some(SHIPPING),
            Some(plain),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "endpoint_refused", "{answer}");
    let (_, listed) = json_of(
        call(
            &router,
            Method::GET,
            "/v1/subscriptions",
            Some(OPS),
            None,
            false,
        )
        .await,
    )
    .await;
    assert_eq!(listed, json!([]), "nothing was stored");
    router.stop().await.expect("clean stop");
}

/// A subscription stored with a `dapr` object by an older version (written into Redis as
/// it kept them) is sent as a webhook: guarded against internal addresses, without the
/// app's token, whatever app it names. Only the configured app's own address gets the
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_dapr_subscription_reaches_only_its_apps_address() {
    std::env::set_var("EVR_TEST_INVENTORY_APP_TOKEN", INVENTORY_APP);
    let redis = RedisServer::start();
    // Plays the internal service (its answer would come back in `last_error`).
    let internal = Subscriber::ok().await;
    let app_port = free_port();
    let inventory = DaprApp::listing(json!([]));
    inventory.listen(app_port).await;
    let mut config = test_config(&redis);
    config.webhooks.allow = Vec::new();
    let mut app = app_config("inventory", app_port);
    app.app_api_token_env = Some("EVR_TEST_INVENTORY_APP_TOKEN".into());
    config.dapr.apps = vec![app];
    let router = TestRouter::start(config).await;
    let stored = |name: &str, endpoint: String| {
        json!({
            "name": name, "topics": ["order.>"], "endpoints": [endpoint],
            "mode": "single", "max_attempts": 1,
            "dapr": {"app_id": "inventory", "pubsubname": "pubsub", "topic": "order.created",
                     "default_path": "/latest/meta-data/"},
        })
    };
    let mut conn = redis.conn();
    for (name, endpoint) in [
        ("to-internal", internal.url()),
        ("to-the-app", format!("http://127.0.0.1:{app_port}")),
    ] {
        let _: () = redis::cmd("HSET")
            .arg("evr:subscriptions")
            .arg(name)
            .arg(stored(name, endpoint).to_string())
            .query(&mut conn)
            .expect("hset");
    }
    let _: i64 = redis::cmd("INCR")
        .arg("evr:subscriptions:version")
        .query(&mut conn)
        .expect("incr");
    eventually(Duration::from_secs(10), async || {
        let (_, subs) =
            json_of(call(&router, Method::GET, "/v1/subscriptions", None, None, false).await).await;
        match subs.as_array().map(Vec::len) {
            Some(2) => Ok(()),
            _ => Err(format!("not loaded: {subs}")),
        }
    })
    .await;
    let (status, _) = json_of(
        call(
            &router,
            Method::POST,
            "/v1/publish/order.created",
            None,
            Some(order_event(1, "ord_1")),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    // The configured app's own address gets it, with its token.
    inventory
        .wait(Duration::from_secs(10), |hits| !hits.is_empty())
        .await;
    assert_eq!(
        inventory.hits()[0].api_token.as_deref(),
        Some(INVENTORY_APP)
    );
    // The internal address gets nothing; the DLQ says why without anything of it.
    let letters = eventually(Duration::from_secs(10), async || {
        let (_, page) = json_of(
            call(
                &router,
                Method::GET,
                "/v1/dlq/to-internal",
                None,
                None,
                false,
            )
            .await,
        )
        .await;
        match page["entries"].as_array() {
            Some(entries) if !entries.is_empty() => Ok(entries.clone()),
            _ => Err(format!("no dead letter yet: {page}")),
        }
    })
    .await;
    assert_eq!(internal.count(), 0, "the internal address was called");
    let error = letters[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "{error}");
    router.stop().await.expect("clean stop");
}

/// What an app dead-letters is published as its principal would publish it: never into a
/// topic the principal may not publish to, never into the topic the subscription reads;
/// and an event reaches a dead-letter topic once, so that two subscriptions that
/// dead-letter into each other's topic do not make a loop (found: 10,061 events in 6 s
/// from one publish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_topics_follow_publish_rights_and_never_loop() {
    let redis = RedisServer::start();
    let port = free_port();
    let app = DaprApp::listing(json!([
        {"pubsubname": "pubsub", "topic": "shipping.a", "route": "/always-retry", "deadLetterTopic": "shipping.b"},
        {"pubsubname": "pubsub", "topic": "shipping.b", "route": "/always-retry", "deadLetterTopic": "shipping.a"},
        {"pubsubname": "pubsub", "topic": "shipping.c", "route": "/always-retry", "deadLetterTopic": "payment.captured"},
        {"pubsubname": "pubsub", "topic": "shipping.d", "route": "/always-retry", "deadLetterTopic": "shipping.d"},
        {"pubsubname": "pubsub", "topic": "payment.captured", "route": "/in"},
    ]));
    app.listen(port).await;
    let mut config = test_config(&redis);
    config.auth = principals();
    let mut shipping = app_config("shipping", port);
    shipping.max_attempts = 2;
    shipping.principal = Some("shipping-service".into());
    config.dapr.apps = vec![shipping];
    let router = TestRouter::start(config).await;
    eventually(Duration::from_secs(10), async || {
        let (_, subs) = json_of(
            call(
                &router,
                Method::GET,
                "/v1/subscriptions",
                Some(OPS),
                None,
                false,
            )
            .await,
        )
        .await;
        match subs.as_array().map(Vec::len) {
            Some(5) => Ok(()),
            _ => Err(format!("not read yet: {subs}")),
        }
    })
    .await;
    let (_, metadata) = json_of(
        call(
            &router,
            Method::GET,
            "/v1.0/metadata",
            Some(OPS),
            None,
            true,
        )
        .await,
    )
    .await;
    let dead_letters: Vec<(String, String)> = metadata["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["topic"].as_str().unwrap_or("").to_string(),
                s["deadLetterTopic"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (topic, expected) in [
        ("shipping.a", "shipping.b"),
        ("shipping.b", "shipping.a"),
        ("shipping.c", ""),
        ("shipping.d", ""),
    ] {
        assert!(
            dead_letters.contains(&(topic.to_string(), expected.to_string())),
            "{topic} → `{expected}` in {dead_letters:?}"
        );
    }
    for topic in ["shipping.a", "shipping.c", "shipping.d"] {
        let (status, answer) = json_of(
            call(
                &router,
                Method::POST,
                &format!("/v1.0/publish/pubsub/{topic}"),
                Some(OPS),
                Some(json!({"n": 1})),
                true,
            )
            .await,
        )
        .await;
        assert_eq!(status, 204, "{answer}");
    }
    // Each app's subscriptions are shown to its principal and to admins, not to others.
    for (token, expected) in [(SHIPPING, 5), (BILLING, 0)] {
        let (_, metadata) = json_of(
            call(
                &router,
                Method::GET,
                "/v1.0/metadata",
                Some(token),
                None,
                true,
            )
            .await,
        )
        .await;
        assert_eq!(
            metadata["subscriptions"].as_array().map(Vec::len),
            Some(expected),
            "{metadata}"
        );
    }
    // a → b once, and no further: b's exhausted copy stays in b's DLQ.
    let b = name_of(&dapr_names(&router).await, "shipping.b");
    eventually(Duration::from_secs(20), async || {
        let on_b = stored_on(&redis, "shipping.b").len();
        let dead = crate::support::dlq_entries(&redis, &b);
        if on_b == 1 && !dead.is_empty() {
            Ok(())
        } else {
            Err(format!("{on_b} on shipping.b, {} in its DLQ", dead.len()))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stored_on(&redis, "shipping.a").len(),
        1,
        "a loop republished into shipping.a"
    );
    assert_eq!(stored_on(&redis, "shipping.b").len(), 1);
    assert_eq!(stored_on(&redis, "shipping.d").len(), 1, "a self loop");
    assert!(
        stored_on(&redis, "payment.captured").is_empty(),
        "published into a topic the app's principal may not publish to"
    );
    assert!(app.on("/in").is_empty());
    router.stop().await.expect("clean stop");
}

/// The names of the Dapr subscriptions, with their Dapr topics.
async fn dapr_names(router: &TestRouter) -> Vec<(String, String)> {
    let (_, subs) = json_of(
        call(
            router,
            Method::GET,
            "/v1/subscriptions",
            Some(OPS),
            None,
            false,
        )
        .await,
    )
    .await;
    subs.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["dapr"]["topic"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn name_of(names: &[(String, String)], topic: &str) -> String {
    names
        .iter()
        .find(|(_, t)| t == topic)
        .map(|(n, _)| n.clone())
        .unwrap_or_default()
}

/// A CloudEvent sent whole (`application/cloudevents+json`) is validated as the same event
/// sent plain: a platform event in its `data` is checked against the schema, and its `id`,
/// `type` and `source` must be non-empty text without control characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevent_is_validated_like_a_plain_body() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let bad_event = json!({
        "event_id": "order-1", "event_type": "order.created", "timestamp": "soon",
        "version": "1.0", "data": {"order_id": "ord_1"}, "metadata": {},
    });
    let post = async |content_type: &str, body: Value| {
        let response = crate::support::client()
            .post(format!("{}/v1.0/publish/pubsub/order.created", router.base))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        json_of(response).await
    };
    let (plain_status, plain) = post("application/json", bad_event.clone()).await;
    assert_eq!(plain_status, 400, "{plain}");
    let cloudevent = json!({
        "specversion": "1.0", "id": "ce-1", "source": "order-service", "type": "order.created",
        "datacontenttype": "application/json", "data": bad_event,
    });
    let (status, answer) = post("application/cloudevents+json", cloudevent.clone()).await;
    assert_eq!(status, 400, "{answer}");
    for path in ["/event_id", "/timestamp", "/metadata/correlation_id"] {
        assert!(answer.to_string().contains(path), "{path} not in {answer}");
    }
    for (attribute, value) in [
        ("id", json!("")),
        ("type", json!("order.created\u{0}")),
        ("source", json!("line\nbreak")),
        ("id", json!("x".repeat(300))),
    ] {
        let mut event = cloudevent.clone();
        event["data"] = json!({"order_id": "ord_2"});
        event[attribute] = value;
        let (status, answer) = post("application/cloudevents+json", event).await;
        assert_eq!(status, 400, "{attribute}: {answer}");
        assert!(answer.to_string().contains(attribute), "{answer}");
    }
    assert!(
        stored_on(&redis, "order.created").is_empty(),
        "a refused event was stored"
    );
    // Printable ids and types of any kind are kept as they are (and shown escaped).
    let mut odd = cloudevent.clone();
    odd["data"] = json!({"order_id": "ord_3"});
    odd["id"] = json!("<img src=x onerror=alert(1)>");
    let (status, answer) = post("application/cloudevents+json", odd).await;
    assert_eq!(status, 204, "{answer}");
    router.stop().await.expect("clean stop");
}
