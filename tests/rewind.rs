//! Rewinding a subscription to a time: the events stored since flow again, in order per
//! key, and only to that subscription; what cannot be rewound is refused with its reason.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;

use support::subscriber::{assert_in_key_order, Subscriber};
use support::{publish_keyed, test_config, RedisServer, RouterApi, TestRouter};

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_subscription_gets_the_events_again_in_key_order_and_no_other_does() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let rewound = Subscriber::ok().await;
    let other = Subscriber::ok().await;
    router
        .subscribe("rewound", &["order.*"], &rewound.url(), json!({}))
        .await;
    router
        .subscribe("untouched", &["order.*"], &other.url(), json!({}))
        .await;
    let before = SystemTime::now() - Duration::from_millis(5);
    let published = publish_keyed(&router, "order.created", 5, 10).await;
    rewound.wait_for(published, Duration::from_secs(30)).await;
    other.wait_for(published, Duration::from_secs(30)).await;
    let first_pass = rewound.count();

    let (status, answer) = router
        .post(
            "/v1/subscriptions/rewound/rewind",
            "application/json",
            json!({"to": rfc3339(before)}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["partitions"].as_u64().is_some_and(|n| n > 0),
        "{answer}"
    );

    let log = rewound
        .wait_for(first_pass + published, Duration::from_secs(30))
        .await;
    // The second pass: every event again, in order per key.
    assert_in_key_order(&log[first_pass..], 5, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        other.count(),
        published,
        "another subscription is not rewound"
    );

    // Forward past everything: nothing more comes.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let (status, _) = router
        .post(
            "/v1/subscriptions/rewound/rewind",
            "application/json",
            json!({"to": rfc3339(later)}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let settled = rewound.count();
    publish_keyed(&router, "order.created", 1, 1).await;
    other.wait_for(published + 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rewound.count(),
        settled,
        "an event stored before the rewind point is skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_that_cannot_be_done_says_why() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe("keyed", &["order.*"], &subscriber.url(), json!({}))
        .await;
    for (path, body, status, word) in [
        (
            "/v1/subscriptions/keyed/rewind",
            json!({"to": "yesterday"}),
            400,
            "to",
        ),
        (
            "/v1/subscriptions/keyed/rewind",
            json!({"when": "2026-01-01T00:00:00Z"}),
            400,
            "when",
        ),
        (
            "/v1/subscriptions/nobody/rewind",
            json!({"to": "2026-01-01T00:00:00Z"}),
            404,
            "nobody",
        ),
    ] {
        let (got, answer) = router
            .post(path, "application/json", body.to_string())
            .await;
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(answer.to_string().contains(word), "{path}: {answer}");
    }
}

/// A subscription ordered by sequence, rewound: each key starts again at its first rewound
/// number (not held back by the numbers it had reached), the rewound events come in
/// sequence order per key, and events published after the rewind follow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_ordered_subscription_rewinds_to_its_first_rewound_numbers() {
    let redis = RedisServer::start();
    let router = TestRouter::start(test_config(&redis)).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "sequenced",
            &["order.*"],
            &subscriber.url(),
            json!({"ordering": "sequence"}),
        )
        .await;
    let publish = |from: u64, to: u64| {
        let events: Vec<_> = (from..to)
            .flat_map(|seq| {
                (0..4).map(move |k| {
                    let mut event = support::order_event(seq * 10 + k, &format!("ord_q{k}"));
                    event["metadata"]["sequence"] = json!(seq);
                    event["data"]["seq"] = json!(seq);
                    event
                })
            })
            .collect();
        let router = &router;
        async move { router.publish_ok("order.created", &json!(events)).await }
    };
    publish(1, 6).await;
    subscriber.wait_for(20, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let point = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(6, 11).await;
    subscriber.wait_for(40, Duration::from_secs(30)).await;

    let (status, answer) = router
        .post(
            "/v1/subscriptions/sequenced/rewind",
            "application/json",
            json!({"to": rfc3339(point)}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    subscriber.wait_for(60, Duration::from_secs(30)).await;
    publish(11, 13).await;
    let log_after = subscriber.wait_for(68, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.count(), 68, "nothing more, nothing held back");
    let sequences = |from: usize, key: &str| -> Vec<u64> {
        log_after[from..]
            .iter()
            .filter(|e| e.key == key)
            .filter_map(|e| e.seq)
            .collect()
    };
    for k in 0..4 {
        let key = format!("ord_q{k}");
        assert_eq!(
            sequences(40, &key),
            vec![6, 7, 8, 9, 10, 11, 12],
            "{key}: the rewound numbers from the point, then the new ones"
        );
    }
}
