//! The archive: every stored event once with its columns, PostgreSQL away or restarted,
//! an instance killed mid-archive, partitions made ahead and dropped by age.

use super::*;

/// Every event is archived once, with the columns the queries need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_event_is_archived_once_with_its_columns() {
    // Not beside the kill-and-restart test, which loads the machine.
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let config = store_config(&redis, &db);
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
    assert_eq!(version, 6, "every migration applied");
    router.stop().await.expect("clean stop");
}

/// A batch whose rows are already stored (read again after a crash before its ack) is
/// written through the path that skips stored rows: read everything again and nothing is
/// in the table twice, and what comes after is archived as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_archived_again_are_skipped_not_doubled() {
    let _shared = support::light().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let router = TestRouter::start(store_config(&redis, &db)).await;
    publish_orders(&router, 0, 300).await;
    wait_for_rows(&db, 300).await;
    router.stop().await.expect("clean stop");
    let rollbacks = rolled_back(&db).await;

    // Every partition's archive group back to the start: every entry is read again.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*{order.*}")
        .query(&mut conn)
        .expect("partition keys");
    let mut rewound = 0;
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).expect("type");
        if kind != "stream" {
            continue;
        }
        let set: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&key)
            .arg(evrouter::eventstore::ARCHIVE)
            .arg("0")
            .query(&mut conn);
        if set.is_ok() {
            rewound += 1;
        }
    }
    assert!(rewound > 0, "the archive reads the order partitions");

    let router = TestRouter::start(store_config(&redis, &db)).await;
    publish_orders(&router, 300, 100).await;
    wait_for_rows(&db, 400).await;
    // The groups have read everything again by now; the count stays.
    let client = db.client().await;
    eventually(Duration::from_secs(30), async || {
        let lag: i64 = client
            .query_one(
                "SELECT count(*) - count(DISTINCT (stream, partition, redis_id)) FROM evr_events",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let mut conn = redis.conn();
        let pending = keys_pending(&mut conn);
        match (lag, pending) {
            (0, 0) => Ok(()),
            other => Err(format!("duplicates and pending: {other:?}")),
        }
    })
    .await;
    assert_eq!(db.count().await, 400, "no event twice");
    // The batches read again met their stored rows: the straight COPY was rolled back and
    // the batch written through the path that skips them.
    eventually(Duration::from_secs(10), async || {
        match rolled_back(&db).await {
            now if now > rollbacks => Ok(()),
            now => Err(format!(
                "{now} transactions rolled back, {rollbacks} before"
            )),
        }
    })
    .await;
    router.stop().await.expect("clean stop");
}

/// Transactions rolled back in the test's database so far.
async fn rolled_back(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("database statistics")
        .get(0)
}

/// Entries of the order partitions the archive has not read yet or not acked yet.
fn keys_pending(conn: &mut redis::Connection) -> i64 {
    let mut total = 0;
    for group in order_partitions_info(conn, &["GROUPS"]) {
        if field_of::<String>(&group, "name").as_deref() != Some(evrouter::eventstore::ARCHIVE) {
            continue;
        }
        for field in ["pending", "lag"] {
            total += field_of::<i64>(&group, field).unwrap_or(1);
        }
    }
    total
}

type Info = std::collections::HashMap<String, redis::Value>;

/// `XINFO <what> <partition> <rest>` over every order partition, the rows of all.
fn order_partitions_info(conn: &mut redis::Connection, what: &[&str]) -> Vec<Info> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*{order.*}")
        .query(conn)
        .unwrap_or_default();
    let mut rows = Vec::new();
    for key in keys {
        let (verb, rest) = what.split_first().expect("an XINFO verb");
        let mut cmd = redis::cmd("XINFO");
        cmd.arg(verb).arg(&key).arg(rest);
        if let Ok(found) = cmd.query::<Vec<Info>>(conn) {
            rows.extend(found);
        }
    }
    rows
}

fn field_of<T: redis::FromRedisValue>(row: &Info, field: &str) -> Option<T> {
    row.get(field)
        .and_then(|v| redis::from_redis_value(v.clone()).ok())
}

/// With PostgreSQL out of reach, publishes and deliveries go on and the archive's lag
/// grows; when it is back, the archive catches up, nothing missing, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_stops_nothing_and_the_archive_catches_up() {
    // Not beside the kill-and-restart test, which loads the machine.
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
    // Not beside the kill-and-restart test, which loads the machine.
    let _shared = support::light().await;
    let db = TestDb::create().await;
    let store = store_on(&db);
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

/// A PostgreSQL cluster of the test's own (`initdb` into a temporary folder, served on a
/// free port), so that restarting it leaves the machine's server alone. Run as the
/// `postgres` user when the tests run as root, as PostgreSQL refuses root.
struct PrivateCluster {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivateCluster {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's programs (Debian layout)")
            .flatten()
            .map(|version| version.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("initdb");
        let dir = std::env::temp_dir().join(format!(
            "evr-pg-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&dir).expect("cluster folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let cluster = Self { dir, bin, port };
        if cluster.as_root() {
            cluster.run("chown", &["postgres:postgres", &cluster.path()], false);
        }
        cluster.pg(
            "initdb",
            &[
                "-D",
                &cluster.path(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster.pg_ctl("start");
        cluster
    }

    /// The URL of its `postgres` database.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn restart(&self) {
        self.pg_ctl("restart");
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.path()
        );
        let log = self.dir.join("log");
        let log = log.to_string_lossy();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.path(),
                "-l",
                &log,
                "-w",
                "-m",
                "fast",
                "-o",
                &options,
                action,
            ],
        );
    }

    fn path(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0"))
    }

    /// One of PostgreSQL's programs, as the `postgres` user when root.
    fn pg(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program).to_string_lossy().into_owned();
        self.run(&program, args, self.as_root());
    }

    fn run(&self, program: &str, args: &[&str], as_postgres: bool) {
        let mut command = if as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            std::process::Command::new(program)
        };
        let out = command.args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl").to_string_lossy().into_owned();
        let path = self.path();
        let args = ["-D", path.as_str(), "-m", "immediate", "stop"];
        let mut command = if self.as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--", &program]);
            command
        } else {
            std::process::Command::new(&program)
        };
        let _ = command.args(args).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An instance killed with SIGKILL while archiving, and PostgreSQL restarted while its
/// successor archives: every event is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_and_a_postgres_restart_lose_and_repeat_nothing() {
    let _alone = support::heavy().await;
    let redis = RedisServer::start();
    let postgres = PrivateCluster::start();
    let db = TestDb::create_on(postgres.url()).await;
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
            postgres.restart();
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

/// Two instances share the archive and the first stops while batches are being written:
/// its graceful stop keeps everything its readers handed over before it exits, so that it
/// leaves nothing pending (a successor would otherwise wait out the write timeout to take
/// those entries), and every event is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mid_archive_leaves_nothing_pending_to_the_stopped_instance() {
    let _alone = support::heavy().await;
    let redis = RedisServer::start();
    let db = TestDb::create().await;
    let url = format!("\"{}\"", db.url);
    let env = [
        ("EVR_EVENTSTORE__URL", url.as_str()),
        ("EVR_EVENTSTORE__BATCH", "200"),
        ("EVR_EVENTSTORE__BATCH_WAIT", "\"50ms\""),
        ("EVR_DELIVERY__LEASE_TTL", "\"2s\""),
    ];
    let mut first = support::process::RouterProcess::start_with_env(&redis, None, &env).await;
    let publish = async |router: &support::process::RouterProcess, rounds: std::ops::Range<u64>| {
        for round in rounds {
            let events: Vec<_> = (0..100)
                .map(|i| order_event(round * 100 + i, &format!("ord_{}", i % 53)))
                .collect();
            router.publish_ok("order.created", &json!(events)).await;
        }
    };
    publish(&first, 0..5).await;
    wait_for_rows(&db, 500).await;
    let mut conn = redis.conn();
    let names: Vec<String> = consumers(&mut conn).into_keys().collect();
    assert_eq!(
        names.len(),
        1,
        "the first instance alone archives: {names:?}"
    );
    let first_name = names[0].clone();
    let second = support::process::RouterProcess::start_with_env(&redis, None, &env).await;
    // Published until some partitions have moved to the second instance by handoff and it
    // has archived from them.
    let mut rounds = 5;
    while consumers(&mut conn).len() < 2 {
        assert!(rounds < 300, "no partition moved to the second instance");
        publish(&second, rounds..rounds + 1).await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&second, rounds..rounds + 10).await;
    publish(&first, rounds + 10..rounds + 20).await;
    let published = (rounds + 20) as i64 * 100;
    // Stopped while the last events are still being archived.
    assert!(first.terminate().success());
    let left = consumers(&mut conn);
    assert_eq!(
        left.get(&first_name).copied().unwrap_or(0),
        0,
        "nothing left pending to the stopped instance: {left:?}"
    );
    wait_for_rows(&db, published).await;
    let client = db.client().await;
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT event_id) FROM evr_events", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(distinct, published, "no event missing");
    assert_eq!(db.count().await, published, "no event twice");
    drop(second);
}

/// Every consumer of the archive's groups over the order partitions, with the entries
/// pending to it.
fn consumers(conn: &mut redis::Connection) -> std::collections::HashMap<String, i64> {
    let mut pending = std::collections::HashMap::new();
    for consumer in order_partitions_info(conn, &["CONSUMERS", evrouter::eventstore::ARCHIVE]) {
        if let Some(name) = field_of::<String>(&consumer, "name") {
            *pending.entry(name).or_default() += field_of::<i64>(&consumer, "pending").unwrap_or(0);
        }
    }
    pending
}
