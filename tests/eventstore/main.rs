//! The event store against a real PostgreSQL (`EVR_TEST_PG_URL`, else the local server;
//! each test makes and drops its own database): the archive (`archive`), queries, traces
//! and rights (`queries`), lookups by id while a day is open and once it has closed
//! (`lookups`), replays (`replay`), data subjects (`subjects`) and restore
//! (`restore`). The test that restarts PostgreSQL restarts a private cluster of its own
//! (`archive::PrivateCluster`), never the machine's; it runs alone, the others share.

#[path = "../support/mod.rs"]
mod support;

mod archive;
mod lookups;
mod queries;
mod replay;
mod restore;
mod subjects;

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
        Self::create_on(admin).await
    }

    /// A database of its own on the server `admin` (a URL of a database to connect to).
    async fn create_on(admin: String) -> Self {
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

/// An event store on `db` with the default settings, not started.
fn store_on(db: &TestDb) -> std::sync::Arc<EventStore> {
    let config = EventStoreConfig {
        url: Some(db.url.clone()),
        ..EventStoreConfig::default()
    };
    EventStore::new(&config)
        .expect("store")
        .expect("configured")
}

/// A router's configuration with the event store in `db`, archiving in short batches.
fn store_config(redis: &RedisServer, db: &TestDb) -> support::Config {
    let mut config = test_config(redis);
    config.eventstore.url = Some(db.url.clone());
    config.eventstore.batch_wait = "20ms".into();
    config
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
