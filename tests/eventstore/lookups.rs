//! Lookups by event id and correlation id, and of outcomes by event id: through the bloom
//! summaries while a day is written, through hash indexes built once it has closed, with
//! the same answers.

use super::*;
use evrouter::eventstore::query::{Cursor, EventFilter};

/// The plan of a lookup as the store runs it (`lookups::lookup`).
async fn plan(client: &mut tokio_postgres::Client, table: &str, condition: &str) -> String {
    let tx = client.transaction().await.expect("transaction");
    tx.batch_execute("SET LOCAL enable_seqscan = off")
        .await
        .expect("set");
    let rows = tx
        .query(
            &format!("EXPLAIN SELECT * FROM {table} WHERE {condition}"),
            &[],
        )
        .await
        .expect("explain");
    tx.commit().await.expect("commit");
    rows.iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the index `name` exists and is valid.
async fn valid_index(client: &tokio_postgres::Client, name: &str) -> Option<bool> {
    client
        .query_opt(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
              WHERE c.relname = $1",
            &[&name],
        )
        .await
        .expect("pg_index")
        .map(|row| row.get(0))
}

async fn assert_found(store: &EventStore) {
    let found = store.event("ev-1234").await.expect("event");
    assert_eq!(found.len(), 1, "one event of that id");
    assert_eq!(found[0].event.event_id, "ev-1234");
    assert_eq!(found[0].outcomes.len(), 2, "{:?}", found[0].outcomes);
    let trace = store.trace("corr-7").await.expect("trace");
    // Every 100th row from the 7th: 20 of the 2,000.
    assert_eq!(trace.len(), 20, "the whole flow");
    assert!(trace
        .iter()
        .all(|e| e.event.correlation_id.as_deref() == Some("corr-7") && e.outcomes.len() == 2));
    let sequences: Vec<i64> = trace.iter().filter_map(|e| e.event.sequence).collect();
    let mut sorted = sequences.clone();
    sorted.sort();
    assert_eq!(sequences, sorted, "in stored order");
    // A key's events, a page at a time, in stored order.
    let mut filter = EventFilter {
        key: Some("k5".into()),
        limit: 50,
        ..EventFilter::default()
    };
    let first = store.events(&filter, |_| true).await.expect("a key's page");
    assert_eq!(first.events.len(), 50);
    filter.after = first.next.as_deref().and_then(Cursor::parse);
    assert!(filter.after.is_some(), "a next page");
    let second = store.events(&filter, |_| true).await.expect("the next");
    let sequences: Vec<i64> = first
        .events
        .iter()
        .chain(&second.events)
        .filter_map(|e| e.sequence)
        .collect();
    // Rows 5, 42, 79, … of the 2,000: 54 of them.
    let expected: Vec<i64> = (0..2000).filter(|g| g % 37 == 5).collect();
    assert_eq!(sequences, expected, "every event of the key, in order");
    // A hostile id is a value, never SQL.
    for id in ["x' OR '1'='1", "ev-1234' --", "%", ""] {
        assert!(store.event(id).await.expect("event").is_empty(), "{id}");
        assert!(store.trace(id).await.expect("trace").is_empty(), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_day_is_searched_through_its_summaries_and_a_closed_day_through_hash_indexes() {
    let _shared = support::light().await;
    let db = TestDb::create().await;
    let store = store_on(&db);
    store.prepare().await.expect("prepared");
    let mut client = db.client().await;
    client
        .execute(
            "INSERT INTO evr_events (stored_at, stream, partition, redis_id, redis_seq, event_id,
                 event_type, topic, entity_key, correlation_id, sequence, received_at, format,
                 payload)
             SELECT date_trunc('day', now()) + g * interval '1 ms', 'evr:order', 0, g || '-0',
                    g, 'ev-' || g, 'order.created', 'order.created', 'k' || (g % 37),
                    'corr-' || (g % 100), g, now(), 'event',
                    json_build_object('pad', repeat('x', 600), 'n', g)
               FROM generate_series(0, 1999) g",
            &[],
        )
        .await
        .expect("a day's rows");
    // Two subscriptions' outcomes of each.
    client
        .execute(
            "INSERT INTO evr_outcomes (at, subscription, event_id, stream, partition, redis_id,
                 fate, status, attempt, latency_us)
             SELECT date_trunc('day', now()) + g * interval '1 ms', s, 'ev-' || g, 'evr:order',
                    0, g || '-0', 'delivered', 200, 1, 900
               FROM generate_series(0, 1999) g, unnest(ARRAY['billing', 'mail']) s",
            &[],
        )
        .await
        .expect("their outcomes");
    let today = Day::of(SystemTime::now()).table("evr_events");
    let outcomes = Day::of(SystemTime::now()).table("evr_outcomes");

    // Open: no hash index, the bloom summaries of the ranges filled so far, used.
    assert_eq!(
        valid_index(&client, &format!("{today}_event_id")).await,
        None
    );
    let ranges = store.summarize(SystemTime::now()).await.expect("summarize");
    assert!(ranges > 0, "ranges summarized: {ranges}");
    for condition in [
        "event_id = 'ev-1234'",
        "correlation_id = 'corr-7'",
        "entity_key = 'k5'",
    ] {
        let plan = plan(&mut client, "evr_events", condition).await;
        assert!(
            plan.contains(&format!(
                "Bitmap Index Scan on {today}_event_id_correlation_id_entity_key_idx"
            )),
            "{condition}: {plan}"
        );
        assert!(!plan.contains(&format!("Seq Scan on {today}")), "{plan}");
    }
    let by_ids = "event_id = ANY('{ev-1, ev-2}')";
    let plan_outcomes = plan(&mut client, "evr_outcomes", by_ids).await;
    assert!(
        plan_outcomes.contains(&format!("Bitmap Index Scan on {outcomes}_event_id_idx")),
        "{plan_outcomes}"
    );
    assert_found(&store).await;

    // Two days on, the day has closed: its hash indexes are built and chosen.
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    store.maintain(later).await.expect("maintain");
    for name in [
        format!("{today}_event_id"),
        format!("{today}_correlation"),
        format!("{today}_key"),
        format!("{outcomes}_event_id"),
    ] {
        assert_eq!(valid_index(&client, &name).await, Some(true), "{name}");
    }
    let plan_by_id = plan(&mut client, "evr_events", "event_id = 'ev-1234'").await;
    // The hash index's name followed by a space: the bloom index's goes on.
    assert!(
        plan_by_id.contains(&format!("{today}_event_id ")),
        "{plan_by_id}"
    );
    let plan_by_flow = plan(&mut client, "evr_events", "correlation_id = 'corr-7'").await;
    assert!(
        plan_by_flow.contains(&format!("{today}_correlation")),
        "{plan_by_flow}"
    );
    let plan_by_key = plan(&mut client, "evr_events", "entity_key = 'k5'").await;
    assert!(
        plan_by_key.contains(&format!("{today}_key ")),
        "{plan_by_key}"
    );
    let plan_outcomes = plan(&mut client, "evr_outcomes", by_ids).await;
    assert!(
        plan_outcomes.contains(&format!("{outcomes}_event_id ")),
        "{plan_outcomes}"
    );
    assert_found(&store).await;

    // An index a build left unfinished is dropped and built again.
    client
        .execute(
            &format!(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{today}_event_id'::regclass"
            ),
            &[],
        )
        .await
        .expect("mark unfinished");
    assert_eq!(
        valid_index(&client, &format!("{today}_event_id")).await,
        Some(false)
    );
    store.maintain(later).await.expect("maintain again");
    assert_eq!(
        valid_index(&client, &format!("{today}_event_id")).await,
        Some(true),
        "built again"
    );
    assert_found(&store).await;
}

/// A store of one connection (`connections = 1`, the least allowed) gets ready and keeps
/// its partitions and summaries: no step holds the connection while waiting for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_one_connection_gets_ready() {
    let _shared = support::light().await;
    let db = TestDb::create().await;
    let config = EventStoreConfig {
        url: Some(db.url.clone()),
        connections: 1,
        ..EventStoreConfig::default()
    };
    let store = EventStore::new(&config)
        .expect("store")
        .expect("configured");
    let within = Duration::from_secs(30);
    tokio::time::timeout(within, store.prepare())
        .await
        .expect("ready within 30 s")
        .expect("prepared");
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    tokio::time::timeout(within, store.maintain(later))
        .await
        .expect("maintained within 30 s")
        .expect("maintained");
    tokio::time::timeout(within, store.summarize(SystemTime::now()))
        .await
        .expect("summarized within 30 s")
        .expect("summarized");
}
