//! The dashboard in a real browser (headless Chromium, Debian's `chromium`) against a
//! running evrouter under a small load: the page's numbers fill in, change while events
//! flow, and once the load stops match `/v1/stats`. A screenshot is taken each run (set
//! `EVR_TEST_SCREENSHOT` to a path to keep it).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::browser::chromium;
use support::subscriber::Subscriber;
use support::{eventually, keyed_event, test_config, RedisServer, RouterApi, TestRouter};

/// The value of `attribute` on the row of subscription `name` in a dumped page.
fn row_value(dom: &str, name: &str, attribute: &str) -> Option<u64> {
    let row = dom.split(&format!("data-subscription=\"{name}\"")).nth(1)?;
    let value = row.split(&format!("{attribute}=\"")).nth(1)?;
    value.split('"').next()?.parse().ok()
}

/// The text of the element with `id` in a dumped page.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let after = dom.split(&format!("id=\"{id}\"")).nth(1)?;
    let text = after.split('>').nth(1)?.split('<').next()?;
    Some(text.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_numbers_that_match_the_stats() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::start(
        Arc::new(|_| (200, String::new())),
        Some(Duration::from_millis(5)),
    )
    .await;
    router
        .subscribe("shipping", &["order.*"], &subscriber.url(), json!({}))
        .await;
    // A small steady load: 10 events every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, published) = (stop.clone(), published.clone());
        let url = router.url("/v1/publish/order.created");
        tokio::spawn(async move {
            let http = support::client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (0..10)
                    .map(|k| keyed_event(n + k, &format!("ord_{}", (n + k) % 50), n))
                    .collect();
                if let Ok(r) = http.post(&url).json(&batch).send().await {
                    if r.status() == 200 {
                        published.fetch_add(10, Ordering::Relaxed);
                    }
                }
                n += 10;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let page = router.url("/ui");
    // The timeline needs two samples (2 s apart) for its first point.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = chromium(&page, &["--dump-dom"]).await;
    let delivered_first = row_value(&first, "shipping", "data-delivered")
        .unwrap_or_else(|| panic!("no row for shipping in:\n{first}"));
    assert!(delivered_first > 0, "{first}");
    let rate = text_of(&first, "published-rate").unwrap_or_default();
    assert!(
        rate.parse::<f64>().is_ok_and(|r| r > 0.0),
        "published rate `{rate}` in:\n{first}"
    );
    assert!(
        text_of(&first, "e2e-p95").is_some_and(|t| t.parse::<f64>().is_ok()),
        "{first}"
    );
    assert!(
        first.contains("(this one)"),
        "the instance's own row: {first}"
    );

    let screenshot = tempfile::tempdir().expect("tempdir");
    let shot = screenshot.path().join("dashboard.png");
    chromium(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1000",
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(keep) = std::env::var("EVR_TEST_SCREENSHOT") {
        std::fs::write(keep, &png).expect("keep the screenshot");
    }

    let second = chromium(&page, &["--dump-dom"]).await;
    let delivered_second = row_value(&second, "shipping", "data-delivered").expect("row");
    assert!(
        delivered_second > delivered_first,
        "the numbers move: {delivered_first} then {delivered_second}"
    );

    // Once the load stops and everything is delivered, the page says what /v1/stats says.
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let total = published.load(Ordering::Relaxed);
    let stats_delivered = eventually(Duration::from_secs(30), async || {
        let stats = router.stats().await;
        match stats["subscriptions"]["shipping"]["delivered"].as_u64() {
            Some(n) if n >= total => Ok(n),
            other => Err(format!("{other:?} of {total} delivered")),
        }
    })
    .await;
    let last = chromium(&page, &["--dump-dom"]).await;
    assert_eq!(
        row_value(&last, "shipping", "data-delivered"),
        Some(stats_delivered),
        "the page and /v1/stats agree"
    );
    router.stop().await.expect("clean stop");
}
