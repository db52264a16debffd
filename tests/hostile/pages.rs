//! The `/ui` pages against stored XSS: events, outcomes and subscriptions carrying HTML in
//! every field the dashboard and the trace page show, loaded with an admin's token in a
//! real browser (headless Chromium). The markup must never run (it would mark the page);
//! the values must show as text; and every `/ui` answer carries the headers that forbid
//! inline script and framing.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::browser::chromium;
use crate::support::secured::{call, principal};
use crate::support::subscriber::Subscriber;
use crate::support::{
    client, eventually, order_event, test_config, AuthConfig, AuthMode, PrincipalConfig,
    RedisServer, RouterApi, TestRouter,
};

const ADMIN: &str = "ui-admin-token";

/// Script that marks the page it runs in with `data-pwned="{what}"` on `<html>`.
/// (The script's own text never holds `data-pwned="`.)
fn marks(what: &str) -> String {
    format!("document.documentElement.setAttribute('data-pwned','{what}')")
}

/// Whether a hostile script marked the dumped `dom`.
fn ran(dom: &str) -> bool {
    dom.contains("data-pwned=\"") || !dom.contains("<html lang=\"en\">")
}

/// `text` as Chromium writes a text node in a dumped DOM.
fn as_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// `js` as HTML character references: still script in an event-handler attribute after
/// the value has been upper-cased (as a subscriber's status word is in its error string).
fn as_references(js: &str) -> String {
    js.chars().map(|c| format!("&#{};", c as u32)).collect()
}

/// A database of its own in the local PostgreSQL (`EVR_TEST_PG_URL`), dropped at the end.
struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    async fn create() -> Self {
        let admin = std::env::var("EVR_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("evr_ui_{}_{}", std::process::id(), fastrand::u32(..));
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answers (EVR_TEST_PG_URL)");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

/// A same-origin front for `router` as an admin's browser sees it: `/boot?next=…` keeps the
/// admin's token in the tab's `sessionStorage` (where the pages look for it, as after
/// typing it in) and goes on to `next`; every other path is evrouter's answer, headers
/// included. Its base URL.
async fn admin_tab(router: &TestRouter, token: &'static str) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let target = router.url("");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(move |request: Request| {
        let target = target.clone();
        async move {
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            if path.starts_with("/boot?") {
                let page = format!(
                    "<!doctype html><script>sessionStorage.setItem('evrouter-token', '{token}');\
                     location.replace(new URLSearchParams(location.search).get('next'));</script>"
                );
                return Response::builder()
                    .header("content-type", "text/html")
                    .body(Body::from(page))
                    .expect("response");
            }
            let mut forward = client().get(format!("{}{path}", target.trim_end_matches('/')));
            if let Some(auth) = request.headers().get("authorization") {
                forward = forward.header("authorization", auth.clone());
            }
            let answer = forward.send().await.expect("evrouter answers");
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                if !matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                ) {
                    response = response.header(name.as_str(), value.as_bytes());
                }
            }
            let body = answer.bytes().await.expect("body");
            response.body(Body::from(body)).expect("response")
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

/// The dumped DOM of `page` (a path with its query) opened in the admin's tab.
async fn open_as_admin(base: &str, page: &str) -> String {
    let boot = format!("{base}/boot?next={}", urlencoding(page));
    chromium(&boot, &["--dump-dom"]).await
}

fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Hostile values in every field the trace page and the dashboard show: the event's id,
/// type and key, its correlation id, a subscriber's error string, and a subscription's
/// name and endpoint. None runs; each shows as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_show_as_text_and_never_run() {
    let redis = RedisServer::start();
    let db = Db::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    // Ids and types are whatever the operator's patterns allow; these allow anything
    // printable, as CloudEvents' ids and types may be.
    config.validation.event_id_pattern = "^[^\\x00-\\x1f]+$".into();
    config.validation.event_type_pattern = "^[^\\x00-\\x1f]+$".into();
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![PrincipalConfig {
            admin: true,
            publish: vec![">".into()],
            ..principal("ops", ADMIN)
        }],
        ..AuthConfig::default()
    };
    let router = TestRouter::start(config).await;

    let key = format!("<img src=x onerror=\"{}\">", marks("key"));
    let id = format!(
        "\"><svg onload=\"{}\"><img src=x onerror=\"{}\">",
        marks("id"),
        marks("id")
    );
    let kind = format!("<img src=x onerror={}>", marks("type").replace(' ', ""));
    let flow = format!("flow\"><img src=x onerror=\"{}\">", marks("flow"));
    // A subscriber that answers every attempt with a status word of its own: it becomes
    // the outcome's error string.
    let status_word = format!("<img src=x onerror=\"{}\">", as_references(&marks("error")));
    let said = json!({ "status": status_word }).to_string();
    let hostile = Subscriber::with_rule(Arc::new(move |_| (200, said.clone()))).await;
    let shipping = Subscriber::ok().await;
    let name = "img-src-x-onerror-alert-1";
    let subscriptions = [
        json!({"name": "shipping", "topics": ["order.*"], "endpoints": [shipping.url()]}),
        json!({
            "name": name,
            "topics": ["order.*", "order.created"],
            "endpoints": [format!("{}?q=%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E", hostile.url())],
            "max_attempts": 2,
            "backoff": {"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": 0.0},
        }),
    ];
    for spec in subscriptions {
        let response = call(
            &router,
            Method::POST,
            "/v1/subscriptions",
            Some(ADMIN),
            Some(spec.clone()),
            false,
        )
        .await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 201, "{spec}: {body}");
    }
    let mut event = order_event(1, &key);
    event["event_id"] = json!(id);
    event["event_type"] = json!(kind);
    event["metadata"]["correlation_id"] = json!(flow);
    let response = call(
        &router,
        Method::POST,
        "/v1/publish/order.created",
        Some(ADMIN),
        Some(event),
        false,
    )
    .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    // The trace holds the event, its delivery and the hostile subscriber's failures.
    let trace_path = format!("/v1/traces/{}", urlencoding(&flow));
    let trace = eventually(Duration::from_secs(60), async || {
        let trace: Value = call(&router, Method::GET, &trace_path, Some(ADMIN), None, false)
            .await
            .json()
            .await
            .unwrap_or(Value::Null);
        let outcomes = trace["events"][0]["outcomes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ended = |sub: &str, fate: &str| {
            outcomes
                .iter()
                .any(|o| o["subscription"] == sub && o["fate"] == fate)
        };
        if ended("shipping", "delivered") && ended(name, "dead_lettered") {
            Ok(trace)
        } else {
            Err(format!("{trace}"))
        }
    })
    .await;
    let error = trace["events"][0]["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["error"].as_str().filter(|e| e.contains("&#")))
        .unwrap_or_else(|| panic!("the subscriber's status word in an error: {trace}"))
        .to_string();

    let base = admin_tab(&router, ADMIN).await;
    let page = format!("/ui/trace?correlation_id={}", urlencoding(&flow));
    let dom = open_as_admin(&base, &page).await;
    assert!(!ran(&dom), "hostile markup ran on the trace page:\n{dom}");
    assert!(dom.contains("1 events, "), "the trace was drawn:\n{dom}");
    for (field, value) in [
        ("event id", &id),
        ("event type", &kind),
        ("key", &key),
        ("error", &error),
    ] {
        assert!(
            dom.contains(&as_text(value)),
            "the {field} `{value}` shows as text:\n{dom}"
        );
    }
    assert!(dom.contains("<title>evrouter trace</title>"), "{dom}");

    let dom = open_as_admin(&base, "/ui").await;
    assert!(!ran(&dom), "hostile markup ran on the dashboard:\n{dom}");
    assert!(
        dom.contains(&format!("data-subscription=\"{name}\"")),
        "the dashboard drew the subscriptions:\n{dom}"
    );
    assert!(dom.contains(&format!("<td>{name}</td>")), "{dom}");
    router.stop().await.expect("clean stop");
}

/// Every `/ui` answer forbids inline script, other origins and framing, and every page
/// takes its scripts and styles from files evrouter serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ui_answer_carries_the_security_headers() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let expected = [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ];
    for (path, content_type) in [
        ("/ui", "text/html"),
        ("/ui/trace", "text/html"),
        ("/ui/trace?correlation_id=x", "text/html"),
        ("/ui/dashboard.js", "text/javascript"),
        ("/ui/trace.js", "text/javascript"),
        ("/ui/dashboard.css", "text/css"),
        ("/ui/trace.css", "text/css"),
    ] {
        let response = client().get(router.url(path)).send().await.expect("get");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        let directive = |name: &str| {
            policy
                .split(';')
                .map(str::trim)
                .find(|d| d.split_whitespace().next() == Some(name))
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            directive("script-src"),
            "script-src 'self'",
            "{path}: {policy}"
        );
        assert_eq!(directive("default-src"), "default-src 'none'", "{path}");
        assert_eq!(
            directive("frame-ancestors"),
            "frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(directive("base-uri"), "base-uri 'none'", "{path}");
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        for (name, value) in expected {
            assert_eq!(header(name), value, "{path}: {name}");
        }
        let body = response.text().await.expect("body");
        if content_type == "text/html" {
            assert!(
                body.matches("<script").count() == body.matches("<script src=\"/ui/").count(),
                "{path}: inline script"
            );
            assert!(!body.contains("style=\""), "{path}: inline style");
        }
    }
    router.stop().await.expect("clean stop");
}
