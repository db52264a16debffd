//! The event store's tables, created and migrated at start-up: numbered migrations, each
//! applied once in its own transaction, under an advisory lock so that instances starting
//! together do not race.

use tokio_postgres::Client;

use super::EventStoreError;

/// The migrations in order; a migration is never changed once released, only followed.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE evr_events (
    stored_at      timestamptz NOT NULL,
    stream         text        NOT NULL,
    partition      integer     NOT NULL,
    redis_id       text        NOT NULL,
    redis_seq      bigint      NOT NULL,
    event_id       text        NOT NULL,
    event_type     text        NOT NULL,
    topic          text        NOT NULL,
    entity_key     text        NOT NULL,
    correlation_id text,
    causation_id   text,
    service        text,
    sequence       bigint,
    event_time     timestamptz,
    received_at    timestamptz NOT NULL,
    format         text        NOT NULL,
    content_type   text,
    payload        jsonb,
    payload_bytes  bytea,
    trace_id       text,
    subjects       text[]      NOT NULL DEFAULT '{}',
    PRIMARY KEY (stored_at, stream, partition, redis_seq)
) PARTITION BY RANGE (stored_at);
CREATE INDEX evr_events_stored_at ON evr_events USING brin (stored_at);
CREATE INDEX evr_events_correlation ON evr_events (correlation_id, stored_at);
CREATE INDEX evr_events_key ON evr_events (entity_key, stored_at);
CREATE INDEX evr_events_event_id ON evr_events (event_id);
CREATE INDEX evr_events_subjects ON evr_events USING gin (subjects);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE evr_outcomes (
    at            timestamptz NOT NULL,
    subscription  text        NOT NULL,
    event_id      text        NOT NULL,
    stream        text        NOT NULL,
    partition     integer     NOT NULL,
    redis_id      text        NOT NULL,
    fate          text        NOT NULL,
    status        integer,
    attempt       integer     NOT NULL,
    latency_us    bigint      NOT NULL,
    error         text
) PARTITION BY RANGE (at);
CREATE INDEX evr_outcomes_event_id ON evr_outcomes (event_id, at);
CREATE INDEX evr_outcomes_at ON evr_outcomes USING brin (at);
"#,
    ),
    (
        3,
        r#"
ALTER TABLE evr_events ADD COLUMN sealed bytea;
"#,
    ),
    // The payload kept as its text (`json` checks it and stores it as sent, where `jsonb`
    // parses it into a tree and writes it again: a replay now republishes the very bytes
    // published), and equality-only lookups by event id and correlation id (events and
    // outcomes) on hash indexes, cheaper to insert into than B-trees of random text.
    // Rewrites the stored events once.
    (
        4,
        r#"
ALTER TABLE evr_events ALTER COLUMN payload TYPE json USING payload::json;
DROP INDEX evr_events_event_id;
CREATE INDEX evr_events_event_id ON evr_events USING hash (event_id);
DROP INDEX evr_events_correlation;
CREATE INDEX evr_events_correlation ON evr_events USING hash (correlation_id);
DROP INDEX evr_outcomes_event_id;
CREATE INDEX evr_outcomes_event_id ON evr_outcomes USING hash (event_id);
"#,
    ),
    // Most events are about no data subject: their empty arrays no longer go into the
    // subjects index (a GIN entry each), which now holds only the events a search for a
    // subject can find. The searches name the same condition, so that they use it.
    (
        5,
        r#"
DROP INDEX evr_events_subjects;
CREATE INDEX evr_events_subjects ON evr_events USING gin (subjects) WHERE subjects <> '{}';
"#,
    ),
    // The event ids, correlation ids and keys found through one BRIN bloom index while a
    // day is written (a summary per 32 pages, where the hash indexes of the ids and the
    // key's B-tree took an entry per row each, more than half of what PostgreSQL spent per
    // archived event); those are built per partition once its day has closed (`lookups`). The same for the outcomes'
    // event ids, whose rows are narrower (more of them per range).
    (
        6,
        r#"
DROP INDEX evr_events_event_id;
DROP INDEX evr_events_correlation;
DROP INDEX evr_events_key;
CREATE INDEX evr_events_ids ON evr_events USING brin (
    event_id text_bloom_ops (n_distinct_per_range = 1000),
    correlation_id text_bloom_ops (n_distinct_per_range = 1000),
    entity_key text_bloom_ops (n_distinct_per_range = 1000)
) WITH (pages_per_range = 32);
DROP INDEX evr_outcomes_event_id;
CREATE INDEX evr_outcomes_ids ON evr_outcomes USING brin (
    event_id text_bloom_ops (n_distinct_per_range = 3000)
) WITH (pages_per_range = 32);
"#,
    ),
];

/// Key of the advisory lock migrations hold (any constant shared by all instances).
const MIGRATION_LOCK: i64 = 0x6576_725f_6d69_6772;

/// Applies the migrations this database has not had; returns the schema version.
pub async fn migrate(client: &mut Client) -> Result<i32, EventStoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS evr_schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let mut version = 0;
    for (number, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM evr_schema_migrations WHERE version = $1",
                &[number],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO evr_schema_migrations (version) VALUES ($1)",
                &[number],
            )
            .await?;
            tracing::info!(version = number, "event store migrated");
        }
        tx.commit().await?;
        version = *number;
    }
    Ok(version)
}
