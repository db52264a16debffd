//! Queries, traces (also in the browser) and the rights of their callers.

use super::*;

/// The queries: pages in stored order without gaps or repeats, filters, one event, and a
/// flow's trace with each subscription's outcomes (a delivery, and retries ending in the
/// DLQ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_page_filter_and_trace_with_outcomes() {
    // Not beside the kill-and-restart test, which loads the machine.
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let config = store_config(&redis, &db);
    let router = TestRouter::start(config).await;
    let shipping = Subscriber::ok().await;
    let billing = Subscriber::with_rule(std::sync::Arc::new(|_| (500, String::new()))).await;
    router
        .subscribe("shipping", &["order.*"], &shipping.url(), json!({}))
        .await;
    router
        .subscribe(
            "billing",
            &["order.*"],
            &billing.url(),
            // Its breaker never opens here: every event's two attempts reach it at once.
            json!({
                "max_attempts": 2,
                "backoff": {"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": 0.0},
                "breaker": {"failure_rate": 1.0, "window": 1000, "min_calls": 1000}
            }),
        )
        .await;
    publish_orders(&router, 0, 30).await;
    let flow: Vec<_> = (100..103)
        .map(|i| {
            let mut event = order_event(i, &format!("ord_f{i}"));
            event["metadata"]["correlation_id"] = json!("flow-1");
            event
        })
        .collect();
    for event in &flow {
        router.publish_ok("order.created", event).await;
    }
    wait_for_rows(&db, 33).await;

    // The flow's trace: its three events in order, each delivered to shipping and
    // dead-lettered at billing after a retry.
    let trace = eventually(Duration::from_secs(30), async || {
        let trace = router.get_json("/v1/traces/flow-1").await;
        let events = trace["events"].as_array().cloned().unwrap_or_default();
        let complete = events.len() == 3
            && events.iter().all(|e| {
                let fates: Vec<String> = e["outcomes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| {
                        format!(
                            "{}:{}",
                            o["subscription"].as_str().unwrap_or(""),
                            o["fate"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                fates.contains(&"shipping:delivered".to_string())
                    && fates.contains(&"billing:retried".to_string())
                    && fates.contains(&"billing:dead_lettered".to_string())
            });
        if complete {
            Ok(events)
        } else {
            Err(format!("{trace}"))
        }
    })
    .await;
    let ids: Vec<&str> = trace
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["evt_order_100", "evt_order_101", "evt_order_102"]);
    let billed = trace[0]["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .find(|o| o["fate"] == "dead_lettered")
        .expect("dead-lettered")
        .clone();
    assert_eq!(billed["attempt"], 2);
    // The first event's attempts reached billing.
    let first = eventually(Duration::from_secs(30), async || {
        let event = router.get_json("/v1/events/evt_order_0").await;
        let answered = event["outcomes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["subscription"] == "billing" && o["status"] == 500);
        if answered {
            Ok(event)
        } else {
            Err(format!("{event}"))
        }
    })
    .await;
    assert_eq!(first["event_id"], "evt_order_0");
    assert!(trace[0]["trace_id"].as_str().is_some_and(|t| t.len() == 32));

    // Pages, oldest first: every event once, in stored order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(cursor) => format!("/v1/events?order=oldest&limit=7&after={cursor}"),
            None => "/v1/events?order=oldest&limit=7".to_string(),
        };
        let page = router.get_json(&path).await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        assert!(events.len() <= 7);
        seen.extend(events.iter().map(|e| {
            (
                e["stored_at"].as_str().unwrap_or("").to_string(),
                e["event_id"].as_str().unwrap_or("").to_string(),
            )
        }));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 33);
    let distinct: std::collections::HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(distinct.len(), 33);
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "stored order");
    // Newest first is the reverse.
    let newest = router.get_json("/v1/events?limit=1").await;
    assert_eq!(newest["events"][0]["event_id"], seen[32].1.as_str());

    let filtered = router
        .get_json("/v1/events?correlation_id=flow-1&key=ord_f101")
        .await;
    assert_eq!(filtered["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(filtered["events"][0]["event_id"], "evt_order_101");
    let one = router.get_json("/v1/events/evt_order_7").await;
    assert_eq!(one["key"], "ord_7");
    assert_eq!(one["payload"]["event_id"], "evt_order_7");

    for (path, word) in [
        ("/v1/events?from=yesterday", "from"),
        ("/v1/events?order=sideways", "order"),
        ("/v1/events?colour=red", "colour"),
        ("/v1/events?after=nonsense", "after"),
    ] {
        let response = client().get(router.url(path)).send().await.expect("get");
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert!(body.to_string().contains(word), "{path}: {body}");
    }
    let missing = client()
        .get(router.url("/v1/events/nope"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    // The trace page draws the same in a real browser: a row per event, a mark per outcome,
    // failures in their own colour.
    let dom = support::browser::chromium(
        &router.url("/ui/trace?correlation_id=flow-1"),
        &["--dump-dom"],
    )
    .await;
    for id in ["evt_order_100", "evt_order_101", "evt_order_102"] {
        assert!(
            dom.contains(&format!("data-event=\"{id}\"")),
            "{id} drawn: {dom}"
        );
    }
    let delivered = dom
        .matches("class=\"outcome delivered\" data-subscription=\"shipping\"")
        .count();
    let dead = dom
        .matches(
            "class=\"outcome failed\" data-subscription=\"billing\" data-fate=\"dead_lettered\"",
        )
        .count();
    assert_eq!((delivered, dead), (3, 3), "{dom}");
    assert!(dom.contains("3 events"), "{dom}");
    router.stop().await.expect("clean stop");
}

/// Rights: a principal sees only events of topics it may subscribe to; a replay into a
/// subscription needs its owner (or an admin), one to a topic an admin; export and erase
/// are an admin's; every read of the store is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_replays_and_subjects_follow_the_callers_rights() {
    use support::secured::principal;
    use support::{AuthConfig, AuthMode, PrincipalConfig};
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = store_config(&redis, &db);
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![
            PrincipalConfig {
                admin: true,
                publish: vec![">".into()],
                ..principal("ops", "ops-token")
            },
            PrincipalConfig {
                subscribe: vec!["order.>".into()],
                ..principal("shipping", "shipping-token")
            },
            PrincipalConfig {
                subscribe: vec!["payment.>".into()],
                ..principal("payments", "payments-token")
            },
            PrincipalConfig {
                subscribe: vec!["order.>".into()],
                ..principal("billing", "billing-token")
            },
        ],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;
    let as_ = |token: &'static str,
               method: reqwest::Method,
               path: String,
               body: Option<serde_json::Value>| {
        let url = router.url(&path);
        async move {
            let mut request = client().request(method, url).bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default(),
            )
        }
    };
    let get = |token, path: &str| as_(token, reqwest::Method::GET, path.to_string(), None);
    let post =
        |token, path: &str, body| as_(token, reqwest::Method::POST, path.to_string(), Some(body));
    let subscriber = Subscriber::ok().await;
    let (status, _) = post(
        "shipping-token",
        "/v1/subscriptions",
        json!({"name": "shipping-sub", "topics": ["order.*"], "endpoints": [subscriber.url()]}),
    )
    .await;
    assert_eq!(status, 201);
    let orders: Vec<_> = (0..3)
        .map(|i| order_event(i, &format!("ord_r{i}")))
        .collect();
    let (status, _) = post("ops-token", "/v1/publish/order.created", json!(orders)).await;
    assert_eq!(status, 200);
    let mut payment = order_event(9, "ord_r9");
    payment["event_type"] = json!("payment.captured");
    payment["event_id"] = json!("evt_payment_9");
    let (status, answer) = post("ops-token", "/v1/publish/payment.captured", payment).await;
    assert_eq!(status, 200, "{answer}");
    wait_for_rows(&db, 4).await;

    let topics = |page: &serde_json::Value| -> Vec<String> {
        page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["topic"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let (_, shipping_view) = get("shipping-token", "/v1/events").await;
    assert_eq!(topics(&shipping_view), ["order.created"; 3]);
    let (_, payments_view) = get("payments-token", "/v1/events").await;
    assert_eq!(topics(&payments_view), ["payment.captured"]);
    let (status, _) = get("shipping-token", "/v1/events/evt_payment_9").await;
    assert_eq!(status, 404, "another topic's event is not shown");
    // A page says nothing of events the caller may not see: no `next` pointing at them
    // (their time, stream and partition), only its own events.
    let (_, oldest) = get("payments-token", "/v1/events?order=oldest&limit=1").await;
    assert_eq!(topics(&oldest), ["payment.captured"], "{oldest}");
    assert!(oldest.get("next").is_none_or(|n| n.is_null()), "{oldest}");
    let (_, newest) = get("shipping-token", "/v1/events?limit=3").await;
    assert_eq!(topics(&newest), ["order.created"; 3]);
    assert!(newest.get("next").is_none_or(|n| n.is_null()), "{newest}");
    // Outcomes are shown to the subscription's owner, not to another reader of the topic.
    let subscriptions_of = |event: &serde_json::Value| -> Vec<String> {
        event["outcomes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["subscription"].as_str().unwrap_or("").to_string())
            .collect()
    };
    eventually(Duration::from_secs(30), async || {
        let (_, event) = get("shipping-token", "/v1/events/evt_order_0").await;
        if subscriptions_of(&event).contains(&"shipping-sub".to_string()) {
            Ok(())
        } else {
            Err(format!("{event}"))
        }
    })
    .await;
    let (status, event) = get("billing-token", "/v1/events/evt_order_0").await;
    assert_eq!(status, 200, "{event}");
    assert!(subscriptions_of(&event).is_empty(), "{event}");
    let (_, trace) = get("billing-token", "/v1/traces/corr_0").await;
    assert!(
        trace["events"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| subscriptions_of(e).is_empty()),
        "{trace}"
    );
    let (_, trace) = get("shipping-token", "/v1/traces/corr_9").await;
    assert_eq!(trace["events"].as_array().map(Vec::len), Some(0));

    let window = json!({"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"});
    for (token, target, expected, why) in [
        (
            "shipping-token",
            json!({"subscription": "shipping-sub"}),
            202,
            "the owner replays into its subscription",
        ),
        (
            "payments-token",
            json!({"subscription": "shipping-sub"}),
            403,
            "not another's subscription",
        ),
        (
            "shipping-token",
            json!({"topic": "order.created"}),
            403,
            "republishing is an admin's",
        ),
    ] {
        let mut body = window.clone();
        body["target"] = target;
        let (status, _) = post(token, "/v1/replay", body).await;
        assert_eq!(status, expected, "{why}");
    }
    for (method, path) in [
        (reqwest::Method::GET, "/v1/subjects/cust_1/export"),
        (reqwest::Method::POST, "/v1/subjects/cust_1/erase"),
    ] {
        let (status, _) = as_("shipping-token", method, path.into(), None).await;
        assert_eq!(status, 403, "{path} is an admin's");
    }
    let (_, audit) = get("ops-token", "/v1/audit?limit=1000").await;
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    let seen = |principal: &str, action: &str| {
        entries
            .iter()
            .any(|e| e["principal"] == principal && e["action"] == action)
    };
    assert!(seen("shipping", "GET /v1/events"), "{audit}");
    assert!(seen("payments", "GET /v1/events"), "{audit}");
    assert!(
        seen("shipping", "GET /v1/traces/{correlation_id}"),
        "{audit}"
    );
    assert!(seen("shipping", "POST /v1/replay"), "{audit}");
    router.stop().await.expect("clean stop");
}
