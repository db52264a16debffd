//! The event store against a real PostgreSQL (`EVR_TEST_PG_URL`, else the local server;
//! each test makes and drops its own database): every stored event archived once, with
//! its columns; PostgreSQL away while publishing and delivery go on, then caught up;
//! partitions made ahead and dropped by age.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;

use support::proxy::Proxy;
use support::subscriber::Subscriber;
use support::{
    client, eventually, order_event, partition_days, test_config, Day, EventStore,
    EventStoreConfig, RedisServer, RouterApi, TestRouter,
};

/// A database of its own, dropped at the end.
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> Self {
        let admin = std::env::var("EVR_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("evr_test_{}_{}", std::process::id(), fastrand::u32(..));
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

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    async fn count(&self) -> i64 {
        let client = self.client().await;
        match client
            .query_one("SELECT count(*) FROM evr_events", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(_) => -1,
        }
    }
}

impl Drop for TestDb {
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

async fn publish_orders(router: &TestRouter, from: u64, n: u64) {
    let events: Vec<_> = (from..from + n)
        .map(|i| order_event(i, &format!("ord_{}", i % 37)))
        .collect();
    for chunk in events.chunks(100) {
        router.publish_ok("order.created", &json!(chunk)).await;
    }
}

async fn wait_for_rows(db: &TestDb, n: i64) {
    eventually(Duration::from_secs(90), async || match db.count().await {
        count if count == n => Ok(()),
        count => Err(format!("{count} rows of {n}")),
    })
    .await;
}

/// Every event is archived once, with the columns the queries need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_event_is_archived_once_with_its_columns() {
    // PostgreSQL is restarted by another test of this file.
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    let router = TestRouter::start(config).await;
    publish_orders(&router, 0, 500).await;
    wait_for_rows(&db, 500).await;

    let client = db.client().await;
    let distinct: i64 = client
        .query_one(
            "SELECT count(DISTINCT (stream, partition, redis_id)) FROM evr_events",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(distinct, 500);
    let row = client
        .query_one(
            "SELECT event_id, event_type, topic, stream, entity_key, correlation_id, service,
                    payload->'data'->>'order_id', length(trace_id), event_time IS NOT NULL,
                    stored_at >= received_at - interval '1 second', format
               FROM evr_events WHERE event_id = $1",
            &[&"evt_order_7"],
        )
        .await
        .expect("the event's row");
    assert_eq!(row.get::<_, String>(0), "evt_order_7");
    assert_eq!(row.get::<_, String>(1), "order.created");
    assert_eq!(row.get::<_, String>(2), "order.created");
    assert_eq!(row.get::<_, String>(3), "order");
    assert_eq!(row.get::<_, String>(4), "ord_7");
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("corr_7"));
    assert_eq!(
        row.get::<_, Option<String>>(6).as_deref(),
        Some("order-service")
    );
    assert_eq!(row.get::<_, Option<String>>(7).as_deref(), Some("ord_7"));
    assert_eq!(row.get::<_, Option<i32>>(8), Some(32));
    assert!(row.get::<_, bool>(9), "the event's timestamp is kept");
    assert!(row.get::<_, bool>(10));
    assert_eq!(row.get::<_, String>(11), "event");
    let version: i32 = client
        .query_one("SELECT max(version) FROM evr_schema_migrations", &[])
        .await
        .expect("migrations")
        .get(0);
    assert_eq!(version, 2, "every migration applied");
    router.stop().await.expect("clean stop");
}

/// With PostgreSQL out of reach, publishes and deliveries go on and the archive's lag
/// grows; when it is back, the archive catches up, nothing missing, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_stops_nothing_and_the_archive_catches_up() {
    // PostgreSQL is restarted by another test of this file.
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let pg_port = db
        .url
        .split_once("@127.0.0.1:")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(5432);
    let proxy = Proxy::start(pg_port).await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.replace(
        &format!("127.0.0.1:{pg_port}"),
        &format!("127.0.0.1:{}", proxy.port),
    ));
    config.eventstore.batch_wait = "20ms".into();
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "shipping",
            &["order.*"],
            &subscriber.url(),
            json!({"start": "earliest"}),
        )
        .await;
    publish_orders(&router, 0, 100).await;
    wait_for_rows(&db, 100).await;

    proxy.cut();
    publish_orders(&router, 100, 300).await;
    subscriber.wait_for(400, Duration::from_secs(30)).await;
    let lag = eventually(Duration::from_secs(30), async || {
        let stats = router.get_json("/v1/stats").await;
        let archive = &stats["subscriptions"]["eventstore-archive"];
        let behind =
            archive["lag"].as_u64().unwrap_or(0) + archive["in_flight"].as_u64().unwrap_or(0);
        if behind > 0 {
            Ok(behind)
        } else {
            Err(format!("{archive}"))
        }
    })
    .await;
    assert!(lag > 0);
    assert_eq!(db.count().await, 100, "nothing archived while away");

    proxy.heal();
    wait_for_rows(&db, 400).await;
    let client = db.client().await;
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT event_id) FROM evr_events", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(distinct, 400);
    router.stop().await.expect("clean stop");
}

/// Partitions are made ahead of today and a day older than the retention is dropped
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_made_ahead_and_dropped_by_age() {
    // PostgreSQL is restarted by another test of this file.
    let _shared = support::light().await;
    let db = TestDb::create().await;
    let config = EventStoreConfig {
        url: Some(db.url.clone()),
        ..EventStoreConfig::default()
    };
    let store = EventStore::new(&config)
        .expect("store")
        .expect("configured");
    let upkeep = store.clone().spawn_upkeep();
    eventually(Duration::from_secs(30), async || {
        if store.ready() {
            Ok(())
        } else {
            Err("not ready".to_string())
        }
    })
    .await;
    let client = db.client().await;
    let days = partition_days(&client, "evr_events").await.expect("days");
    let today = Day::of(SystemTime::now());
    assert!(
        days.contains(&today) && days.contains(&Day(today.0 + 2)),
        "{days:?}"
    );
    client
        .execute(
            "INSERT INTO evr_events (stored_at, stream, partition, redis_id, redis_seq, event_id,
                 event_type, topic, entity_key, received_at, format)
             VALUES (now(), 'order', 0, '1-0', 0, 'e1', 'order.created', 'order.created', 'k', now(), 'event')",
            &[],
        )
        .await
        .expect("a row today");
    // A year and a week from now, today is past the retention.
    let later = SystemTime::now() + Duration::from_secs(372 * 86_400);
    let dropped = store.maintain(later).await.expect("maintain");
    assert!(dropped.contains(&today), "{dropped:?}");
    assert_eq!(db.count().await, 0, "dropped with its partition");
    let days = partition_days(&client, "evr_events").await.expect("days");
    assert!(days.contains(&Day::of(later)));
    upkeep.abort();
}

/// The queries: pages in stored order without gaps or repeats, filters, one event, and a
/// flow's trace with each subscription's outcomes (a delivery, and retries ending in the
/// DLQ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_page_filter_and_trace_with_outcomes() {
    // PostgreSQL is restarted by another test of this file.
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
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
            json!({"max_attempts": 2, "backoff": {"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": 0.0}}),
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
    // The first event's attempts reached billing (later ones may find its breaker open).
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
    let output = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(router.url("/ui/trace?correlation_id=flow-1"))
        .output()
        .await
        .expect("chromium (Debian's chromium package) is installed");
    let dom = String::from_utf8_lossy(&output.stdout);
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

/// Restarts the local PostgreSQL cluster (Debian's `pg_ctlcluster`).
fn restart_postgres() {
    let clusters =
        std::fs::read_dir("/etc/postgresql").expect("a local PostgreSQL (Debian layout)");
    for version in clusters.flatten() {
        let version = version.file_name().to_string_lossy().to_string();
        let status = std::process::Command::new("pg_ctlcluster")
            .args([&version, "main", "restart"])
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster {version} main restart");
    }
}

/// An instance killed with SIGKILL while archiving, and PostgreSQL restarted while its
/// successor archives: every event is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_and_a_postgres_restart_lose_and_repeat_nothing() {
    let _alone = support::heavy().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let url = format!("\"{}\"", db.url);
    let env = [
        ("EVR_EVENTSTORE__URL", url.as_str()),
        ("EVR_EVENTSTORE__BATCH", "200"),
        ("EVR_EVENTSTORE__BATCH_WAIT", "\"20ms\""),
        ("EVR_DELIVERY__LEASE_TTL", "\"2s\""),
    ];
    let first = support::process::RouterProcess::start_with_env(&redis, None, &env).await;
    let mut published = 0u64;
    for round in 0..20 {
        let events: Vec<_> = (0..100)
            .map(|i| order_event(round * 100 + i, &format!("ord_{}", i % 41)))
            .collect();
        first.publish_ok("order.created", &json!(events)).await;
        published += 100;
        if db.count().await >= 600 {
            break;
        }
    }
    // Killed in the middle of archiving.
    first.signal("KILL");
    let second = support::process::RouterProcess::start_with_env(&redis, None, &env).await;
    for round in 20..30 {
        let events: Vec<_> = (0..100)
            .map(|i| order_event(round * 100 + i, &format!("ord_{}", i % 41)))
            .collect();
        second.publish_ok("order.created", &json!(events)).await;
        published += 100;
        if round == 24 {
            restart_postgres();
        }
    }
    wait_for_rows(&db, published as i64).await;
    let client = db.client().await;
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT event_id) FROM evr_events", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(distinct, published as i64, "no event missing");
    // Nothing is written twice, even after the kill made the successor read again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.count().await, published as i64, "no event twice");
}

async fn replay_status(router: &TestRouter, id: &str, state: &str) -> serde_json::Value {
    eventually(Duration::from_secs(60), async || {
        let status = router.get_json(&format!("/v1/replays/{id}")).await;
        if status["state"] == state {
            Ok(status)
        } else {
            Err(format!("{status}"))
        }
    })
    .await
}

/// A replay from PostgreSQL into one subscription: every archived event again, marked as
/// a replay, in stored order per key, to that subscription only; one stopped half-way
/// goes on from where it stopped; a replay to a topic publishes the events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_store_reaches_one_subscription_in_key_order_and_resumes() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    let router = TestRouter::start(config).await;
    let target = Subscriber::ok().await;
    let other = Subscriber::ok().await;
    router
        .subscribe("replayed", &["order.*"], &target.url(), json!({}))
        .await;
    router
        .subscribe("bystander", &["order.*"], &other.url(), json!({}))
        .await;
    let from = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let published = support::publish_keyed(&router, "order.created", 5, 10).await;
    target.wait_for(published, Duration::from_secs(30)).await;
    other.wait_for(published, Duration::from_secs(30)).await;
    wait_for_rows(&db, published as i64).await;
    let to = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(60));

    let (status, started) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "target": {"subscription": "replayed"}, "rate": 2000})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["total"], published);
    let id = started["id"].as_str().expect("id").to_string();
    let done = replay_status(&router, &id, "done").await;
    assert_eq!(done["done"], published, "{done}");
    assert_eq!(done["failed"], 0);
    let log = target
        .wait_for(2 * published, Duration::from_secs(30))
        .await;
    let replayed: Vec<_> = log.iter().filter(|r| r.replay).cloned().collect();
    assert_eq!(
        replayed.len(),
        published,
        "every replayed request is marked"
    );
    support::subscriber::assert_in_key_order(&replayed, 5, 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        other.count(),
        published,
        "no other subscription gets the replay"
    );

    // Slowly, stopped after its first step, then resumed from there.
    let (_, slow) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "filter": {"keys": ["ord_0", "ord_1"]},
                   "target": {"subscription": "replayed"}, "rate": 10})
            .to_string(),
        )
        .await;
    let id = slow["id"].as_str().expect("id").to_string();
    assert_eq!(slow["total"], 20);
    let response = client()
        .delete(router.url(&format!("/v1/replays/{id}")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 202);
    let stopped = replay_status(&router, &id, "cancelled").await;
    let sent = stopped["done"].as_u64().expect("done");
    assert!(sent < 20, "stopped before the end: {stopped}");
    let (status, _) = router.post_empty(&format!("/v1/replays/{id}/resume")).await;
    assert_eq!(status, 202);
    let finished = replay_status(&router, &id, "done").await;
    assert_eq!(finished["done"], 20, "{finished}");

    // To a topic: published again there, stored once more.
    let (status, republish) = router
        .post(
            "/v1/replay",
            "application/json",
            json!({"from": from.to_string(), "to": to.to_string(),
                   "filter": {"keys": ["ord_3"]}, "target": {"topic": "audit.replayed"}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 202, "{republish}");
    let id = republish["id"].as_str().expect("id").to_string();
    replay_status(&router, &id, "done").await;
    let stored = support::dapr_app::stored_on(&redis, "audit.replayed");
    assert_eq!(stored.len(), 10);
    let seqs: Vec<u64> = stored
        .iter()
        .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).ok())
        .filter_map(|v| v["data"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "in stored order");

    for (body, word) in [
        (
            json!({"from": "then", "to": to.to_string(), "target": {"topic": "x"}}),
            "from",
        ),
        (
            json!({"from": from.to_string(), "to": to.to_string(), "target": {"subscription": "nobody"}}),
            "nobody",
        ),
        (
            json!({"from": from.to_string(), "to": to.to_string(), "target": {"queue": "x"}}),
            "queue",
        ),
    ] {
        let (status, answer) = router
            .post("/v1/replay", "application/json", body.to_string())
            .await;
        assert!(status == 400 || status == 404, "{body}: {status} {answer}");
        assert!(answer.to_string().contains(word), "{answer}");
    }
    router.stop().await.expect("clean stop");
}

/// A data subject's events: exported from PostgreSQL and from Redis (streams and a DLQ) as
/// JSON Lines, then erased everywhere; a second export finds nothing, other subjects'
/// events are untouched, and the audit trail says how many without naming the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_events_are_exported_then_erased_everywhere() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    config.eventstore.subjects = vec![support::SubjectConfig {
        topics: vec!["order.>".into()],
        pointers: vec!["/data/customer_id".into()],
    }];
    let router = TestRouter::start(config).await;
    let refusing = Subscriber::with_rule(std::sync::Arc::new(|_| (400, String::new()))).await;
    router
        .subscribe(
            "refuser",
            &["order.*"],
            &refusing.url(),
            json!({"max_attempts": 1}),
        )
        .await;
    let events: Vec<_> = (0..10)
        .map(|i| {
            let mut event = order_event(i, &format!("ord_s{i}"));
            event["data"]["customer_id"] = json!(if i < 4 { "cust_gone" } else { "cust_kept" });
            event
        })
        .collect();
    router.publish_ok("order.created", &json!(events)).await;
    wait_for_rows(&db, 10).await;
    eventually(Duration::from_secs(30), async || {
        let page = router.get_json("/v1/dlq/refuser").await;
        let n = page["entries"].as_array().map_or(0, Vec::len);
        if n == 10 {
            Ok(())
        } else {
            Err(format!("{n} dead letters"))
        }
    })
    .await;

    let export = |subject: &'static str| {
        let url = router.url(&format!("/v1/subjects/{subject}/export"));
        async move {
            let response = client().get(url).send().await.expect("export");
            assert_eq!(response.status(), 200);
            let text = response.text().await.expect("lines");
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
                .collect::<Vec<_>>()
        }
    };
    let lines = export("cust_gone").await;
    let count = |source: &str| lines.iter().filter(|l| l["source"] == source).count();
    // 4 archived rows, 4 stream entries, 4 dead letters.
    assert_eq!(
        (count("event_store"), count("redis"), count("dlq")),
        (4, 4, 4),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .all(|l| l["event"]["data"]["customer_id"] == "cust_gone"));

    let (status, erased) = router.post_empty("/v1/subjects/cust_gone/erase").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["event_store"], 4);
    assert_eq!(erased["streams"], 4);
    assert_eq!(erased["dlqs"], 4);
    assert_eq!(erased["remaining"], 0);
    assert!(
        export("cust_gone").await.is_empty(),
        "nothing of the subject remains"
    );
    let kept = export("cust_kept").await;
    assert_eq!(
        kept.len(),
        18,
        "6 rows, 6 entries, 6 dead letters of another subject stay"
    );
    // The rows stay as tombstones, without the subject's data.
    let client_pg = db.client().await;
    let tombstones: i64 = client_pg
        .query_one(
            "SELECT count(*) FROM evr_events WHERE payload->>'erased' = 'true' AND payload::text NOT LIKE '%cust_gone%'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(tombstones, 4);
    let audit = router.get_json("/v1/audit").await;
    let text = audit.to_string();
    assert!(text.contains("ERASE data subject"), "{text}");
    assert!(text.contains("4 event store rows redacted"), "{text}");
    assert!(
        !text.contains("cust_gone"),
        "the audit trail does not name the subject: {text}"
    );
    router.stop().await.expect("clean stop");
}

/// Redis restarted without persistence loses every stream; `evrouter restore` writes the
/// archived events back with their ids, and a subscription made again reads them in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_writes_archived_events_back_after_redis_lost_them() {
    let _shared = support::light().await;
    let mut redis = RedisServer::start();
    let db = TestDb::create().await;
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    let from = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let router = TestRouter::start(config.clone()).await;
    let published = support::publish_keyed(&router, "order.created", 5, 20).await;
    wait_for_rows(&db, published as i64).await;
    let to = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(1));
    let before: std::collections::BTreeSet<(String, String)> = redis
        .all_envelopes()
        .into_iter()
        .filter(|(_, _, e)| e.topic == "order.created")
        .map(|(key, id, _)| (key, id))
        .collect();
    assert_eq!(before.len(), published);
    router.stop().await.expect("clean stop");

    redis.restart();
    assert_eq!(redis.order_entries(), 0, "Redis lost everything");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("evrouter.toml");
    std::fs::write(
        &file,
        format!(
            "[redis]\nurl = \"{}\"\n\n[eventstore]\nurl = \"{}\"\n",
            redis.url(),
            db.url
        ),
    )
    .expect("config");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .args(["restore", "--config"])
        .arg(&file)
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .output()
        .await
        .expect("evrouter restore");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["written"], published);
    assert_eq!(report["skipped"], 0);
    let after: std::collections::BTreeSet<(String, String)> = redis
        .all_envelopes()
        .into_iter()
        .filter(|(_, _, e)| e.topic == "order.created")
        .map(|(key, id, _)| (key, id))
        .collect();
    assert_eq!(
        after, before,
        "every event back in its partition under its id"
    );

    // A subscription made again reads them from the start, in order per key.
    let router = TestRouter::start(config).await;
    let subscriber = Subscriber::ok().await;
    router
        .subscribe(
            "again",
            &["order.*"],
            &subscriber.url(),
            json!({"start": "earliest"}),
        )
        .await;
    let log = subscriber
        .wait_for(published, Duration::from_secs(30))
        .await;
    support::subscriber::assert_in_key_order(&log, 5, 20);
    // A second restore skips what is there.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_evrouter"))
        .args(["restore", "--config"])
        .arg(&file)
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .output()
        .await
        .expect("evrouter restore");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("report");
    assert_eq!(report["written"], 0);
    assert_eq!(report["skipped"], published);
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
    let mut config = test_config(&redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
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
    let subscriber = Subscriber::ok().await;
    let (status, _) = as_(
        "shipping-token",
        reqwest::Method::POST,
        "/v1/subscriptions".into(),
        Some(
            json!({"name": "shipping-sub", "topics": ["order.*"], "endpoints": [subscriber.url()]}),
        ),
    )
    .await;
    assert_eq!(status, 201);
    let orders: Vec<_> = (0..3)
        .map(|i| order_event(i, &format!("ord_r{i}")))
        .collect();
    let (status, _) = as_(
        "ops-token",
        reqwest::Method::POST,
        "/v1/publish/order.created".into(),
        Some(json!(orders)),
    )
    .await;
    assert_eq!(status, 200);
    let mut payment = order_event(9, "ord_r9");
    payment["event_type"] = json!("payment.captured");
    payment["event_id"] = json!("evt_payment_9");
    let (status, answer) = as_(
        "ops-token",
        reqwest::Method::POST,
        "/v1/publish/payment.captured".into(),
        Some(payment),
    )
    .await;
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
    let (_, shipping_view) = as_(
        "shipping-token",
        reqwest::Method::GET,
        "/v1/events".into(),
        None,
    )
    .await;
    assert_eq!(topics(&shipping_view), ["order.created"; 3]);
    let (_, payments_view) = as_(
        "payments-token",
        reqwest::Method::GET,
        "/v1/events".into(),
        None,
    )
    .await;
    assert_eq!(topics(&payments_view), ["payment.captured"]);
    let (status, _) = as_(
        "shipping-token",
        reqwest::Method::GET,
        "/v1/events/evt_payment_9".into(),
        None,
    )
    .await;
    assert_eq!(status, 404, "another topic's event is not shown");
    let (_, trace) = as_(
        "shipping-token",
        reqwest::Method::GET,
        "/v1/traces/corr_9".into(),
        None,
    )
    .await;
    assert_eq!(trace["events"].as_array().map(Vec::len), Some(0));

    let window = json!({"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"});
    let replay = |target: serde_json::Value| {
        let mut body = window.clone();
        body["target"] = target;
        Some(body)
    };
    let (status, _) = as_(
        "shipping-token",
        reqwest::Method::POST,
        "/v1/replay".into(),
        replay(json!({"subscription": "shipping-sub"})),
    )
    .await;
    assert_eq!(status, 202, "the owner replays into its subscription");
    let (status, _) = as_(
        "payments-token",
        reqwest::Method::POST,
        "/v1/replay".into(),
        replay(json!({"subscription": "shipping-sub"})),
    )
    .await;
    assert_eq!(status, 403, "not another's subscription");
    let (status, _) = as_(
        "shipping-token",
        reqwest::Method::POST,
        "/v1/replay".into(),
        replay(json!({"topic": "order.created"})),
    )
    .await;
    assert_eq!(status, 403, "republishing is an admin's");
    for (method, path) in [
        (reqwest::Method::GET, "/v1/subjects/cust_1/export"),
        (reqwest::Method::POST, "/v1/subjects/cust_1/erase"),
    ] {
        let (status, _) = as_("shipping-token", method, path.into(), None).await;
        assert_eq!(status, 403, "{path} is an admin's");
    }
    let (_, audit) = as_(
        "ops-token",
        reqwest::Method::GET,
        "/v1/audit?limit=1000".into(),
        None,
    )
    .await;
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
