//! The archive subscription's subscriber, a sink: instead of a webhook, each batch of
//! entries read is written to PostgreSQL in one transaction (one binary `COPY` into the
//! table; when a row is already there, a staging table and an insert that skips what is
//! stored), and its entries are acked in Redis only once that transaction has committed.
//! Delivery does the rest as for any subscription: leases over the partitions, reading,
//! retries while PostgreSQL is away, lag in the metrics.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::partitions::{Day, KnownDays};
use super::rows::{Row, COLUMNS};
use super::sealing::{Keys, Plain, NONCE_LEN};
use super::{EventStore, EventStoreError};
use crate::delivery::transport::{
    Forwarded, Item, Keeping, Outcome, Presented, Reply, Request, Sending, Sink, Subscriber,
};
use crate::model::envelope::{EntryView, EnvelopeError, Stored};

/// The archive's subscriber, shared by the subscription's shards.
pub struct Archive {
    store: Arc<EventStore>,
    /// Days whose partition is known to exist.
    days: Arc<KnownDays>,
}

impl Archive {
    /// Writes into `store`.
    pub fn new(store: Arc<EventStore>) -> Self {
        Self {
            store,
            days: Arc::new(KnownDays::default()),
        }
    }
}

impl Subscriber for Archive {
    fn present(&self, raw: &Bytes, _view: &EntryView) -> Result<Option<Presented>, EnvelopeError> {
        // The whole entry: the row is made from the envelope when it is written.
        Ok(Some(Presented {
            body: raw.clone(),
            route: None,
            content_type: None,
        }))
    }

    fn pick(&self) -> Result<usize, Option<std::time::Instant>> {
        Ok(0)
    }

    /// A request as a batch (delivery hands the archive whole batches through
    /// [`Archive::sink`]; this path is kept for a caller that sends requests).
    fn send(&self, _endpoint: usize, request: Request) -> Sending {
        let n = request.items.len();
        let kept = self.keep(Arc::new(request.items));
        Box::pin(async move {
            match kept.await {
                Ok(()) => Reply::uniform(Some(200), Outcome::Delivered, n),
                Err(err) => Reply::uniform(None, Outcome::Retry(err), n),
            }
        })
    }

    fn forward(&self, _raw: &Bytes, _body: &Bytes, _content_type: Option<&Arc<str>>) -> Forwarded {
        Forwarded::NotAsked
    }

    fn sink(&self) -> Option<&dyn Sink> {
        Some(self)
    }
}

impl Sink for Archive {
    fn keep(&self, batch: Arc<Vec<Item>>) -> Keeping {
        let store = self.store.clone();
        let days = self.days.clone();
        Box::pin(async move {
            let n = batch.len();
            let timeout = super::WRITE_TIMEOUT;
            match tokio::time::timeout(timeout, write(&store, &days, &batch)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, events = n, "event store write failed; retrying");
                    Err(err.to_string())
                }
                Err(_) => Err(format!("event store write took over {timeout:?}")),
            }
        })
    }

    fn concurrency(&self) -> usize {
        self.store.connections()
    }
}

/// Writes one batch's events in one transaction; rows already stored (a batch written
/// again after a crash before its ack) are skipped.
async fn write(
    store: &EventStore,
    days: &KnownDays,
    batch: &[Item],
) -> Result<(), EventStoreError> {
    // Each entry read where it lies (or from one aligned copy), its row borrowing from it.
    // An entry that cannot be read was skipped when it was read; one here is kept out.
    let stored: Vec<(&Item, Stored)> = batch
        .iter()
        .filter_map(|item| Stored::open(&item.body).ok().map(|entry| (item, entry)))
        .collect();
    let mut rows = Vec::with_capacity(stored.len());
    for (item, entry) in &stored {
        if let Ok(fields) = entry.fields() {
            rows.push(Row::new(
                fields,
                &item.partition,
                &item.id,
                store.subjects(),
            ));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    if store.seals() {
        seal_rows(store.keys(), &mut rows).await?;
    }
    let mut client = store.client().await?;
    days.ensure(
        &client,
        "evr_events",
        rows.iter().map(|r| Day::of(r.stored_at)),
    )
    .await?;
    // Straight into the table: a row already there (a batch written again after a crash
    // before its ack, or after a write that outlived its timeout) fails the whole COPY on
    // the primary key, and only then is the batch written through a staging table that
    // skips what is stored. The common case writes each row once.
    let tx = client.transaction().await?;
    match copy_rows(&tx, "evr_events", &rows).await {
        Ok(()) => {
            tx.commit().await?;
            return Ok(());
        }
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => tx.rollback().await?,
        Err(err) => return Err(err.into()),
    }
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS evr_staging (LIKE evr_events) ON COMMIT DELETE ROWS",
    )
    .await?;
    copy_rows(&tx, "evr_staging", &rows).await?;
    tx.execute(
        "INSERT INTO evr_events SELECT * FROM evr_staging ON CONFLICT DO NOTHING",
        &[],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Writes `rows` into `table` with one binary COPY.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[Row<'_>],
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let types: Vec<_> = COLUMNS.iter().map(|(_, ty)| ty.clone()).collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({}) FROM STDIN BINARY",
            names.join(", ")
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for row in rows {
        writer.as_mut().write(&row.values()).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Seals the payload of every row about a data subject, making the keys of subjects new
/// to the store.
pub async fn seal_rows(keys: &Keys, rows: &mut [Row<'_>]) -> Result<(), EventStoreError> {
    let ring = {
        let subjects: BTreeSet<&str> = rows
            .iter()
            .flat_map(|r| r.subjects.iter().map(String::as_str))
            .collect();
        if subjects.is_empty() {
            return Ok(());
        }
        keys.issue(&subjects).await?
    };
    let mut nonces = vec![0u8; NONCE_LEN * rows.len()];
    getrandom::fill(&mut nonces)
        .map_err(|e| EventStoreError::Config(format!("no random bytes: {e}")))?;
    for (row, nonce) in rows.iter_mut().zip(nonces.chunks_exact(NONCE_LEN)) {
        if row.subjects.is_empty() {
            continue;
        }
        let plain = match (row.payload.take(), row.payload_bytes.take()) {
            (Some(json), _) => Plain::Json(json.0.to_vec()),
            (None, Some(bytes)) => Plain::Bytes(bytes.to_vec()),
            (None, None) => Plain::Bytes(Vec::new()),
        };
        let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap_or_default();
        row.sealed = Some(
            ring.seal(&row.subjects, row.event_id, &plain, nonce)
                .ok_or_else(|| {
                    EventStoreError::Config(
                        "a subject's key was erased while its event was archived".into(),
                    )
                })?,
        );
    }
    Ok(())
}
