//! Writers: each has one Redis connection. A publish request goes whole to one writer (the
//! writer of its first event's partition, which spreads requests evenly); a writer gathers
//! what is queued into one batch, sends it as one pipeline (one in flight per writer, so the
//! requests it takes keep their order), and answers every caller. A request of several
//! entries is one transaction (MULTI/EXEC) in the pipeline: Redis applies all of it or, out
//! of memory, none of it. Requests answered one after the other are stored in that order;
//! requests in flight together have no order between them, as with any broker.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::xxh3_64;

use super::StoreError;
use crate::catalog::StreamSpec;
use crate::health::{Health, Part};
use crate::metrics::{Metrics, RoundTrip};
use crate::model::envelope::ENTRY_FIELD;

/// Appends an entry unless its dedup key exists; records the new id under the dedup key.
/// KEYS: partition, dedup key. ARGV: window ms, entry bytes.
/// Returns `{1, id}` when appended, `{0, original id}` for a duplicate.
const DEDUP_APPEND: &str = r#"
local prev = redis.call('GET', KEYS[2])
if prev then return {0, prev} end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
"#;

/// One entry to append to a partition.
#[derive(Debug)]
pub struct Entry {
    /// The stream it belongs to (for retention and dedup settings).
    pub stream: Arc<StreamSpec>,
    /// The partition's Redis key.
    pub partition_key: Arc<str>,
    /// The dedup marker key, when the stream deduplicates.
    pub dedup_key: Option<String>,
    /// The encoded envelope.
    pub value: Vec<u8>,
}

/// What Redis did with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Appended under this stream id.
    New(String),
    /// Already appended within the dedup window, under this id; nothing was added.
    Duplicate(String),
}

impl Appended {
    /// The stream id, new or original.
    pub fn id(&self) -> &str {
        match self {
            Appended::New(id) | Appended::Duplicate(id) => id,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

struct Job {
    entries: Vec<Entry>,
    reply: Reply,
}

/// Settings of every writer.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most entries per pipeline.
    pub max_batch: usize,
    /// Longest wait for more entries before sending a partial batch.
    pub linger: Duration,
    /// Most queued jobs per writer.
    pub queue_capacity: usize,
    /// Pipeline response timeout.
    pub response_timeout: Duration,
}

/// The set of writers and the handles to reach them.
pub struct WriterPool {
    senders: Vec<mpsc::Sender<Job>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl WriterPool {
    /// Starts `count` writers, each on its own connection.
    pub fn start(
        connections: Vec<ConnectionManager>,
        settings: WriterSettings,
        health: &Health,
        metrics: &Metrics,
    ) -> Self {
        let round_trip = metrics.round_trip("write");
        let mut senders = Vec::with_capacity(connections.len());
        let mut tasks = Vec::with_capacity(connections.len());
        let (stop, _) = watch::channel(false);
        for (index, conn) in connections.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(settings.queue_capacity);
            let writer = Writer {
                part: health.part(format!("writer-{index}")),
                round_trip,
                index,
                rx,
                conn,
                settings: settings.clone(),
                stop: stop.subscribe(),
            };
            senders.push(tx);
            tasks.push(tokio::spawn(writer.run()));
        }
        Self {
            senders,
            tasks: std::sync::Mutex::new(tasks),
            stop,
        }
    }

    /// Number of writers.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether there are no writers.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// The writer of a request whose first event goes to this partition.
    pub fn writer_of(&self, partition_key: &str) -> usize {
        (xxh3_64(partition_key.as_bytes()) % self.senders.len().max(1) as u64) as usize
    }

    /// Queues one request's entries on `writer` without waiting; `Busy` when the queue is
    /// full.
    pub fn submit(
        &self,
        writer: usize,
        entries: Vec<Entry>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let sender = self.senders.get(writer).ok_or(StoreError::Closed)?;
        sender
            .try_send(Job { entries, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        Ok(rx)
    }

    /// Stops taking entries (new submits get `Closed`), lets every writer flush what is
    /// already queued, and waits for them.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *crate::model::sync::lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

struct Writer {
    part: Arc<Part>,
    round_trip: RoundTrip,
    index: usize,
    rx: mpsc::Receiver<Job>,
    conn: ConnectionManager,
    settings: WriterSettings,
    stop: watch::Receiver<bool>,
}

impl Writer {
    async fn run(mut self) {
        let mut jobs: Vec<Job> = Vec::with_capacity(256);
        let mut stopping = false;
        loop {
            let received = tokio::select! {
                received = self.rx.recv_many(&mut jobs, 1) => received,
                _ = self.stop.changed(), if !stopping => {
                    // Close the queue: what is already in it is still received and flushed.
                    stopping = true;
                    self.rx.close();
                    continue;
                }
            };
            if received == 0 {
                break;
            }
            let mut count: usize = jobs.iter().map(|j| j.entries.len()).sum();
            self.take_queued(&mut jobs, &mut count);
            self.linger(&mut jobs, &mut count).await;
            let part = self.part.clone();
            let started = std::time::Instant::now();
            if part.round(self.flush(&mut jobs)).await.is_none() {
                // Callers of a batch whose write panicked are told it was not stored.
                jobs.clear();
            }
            self.round_trip.record(started, count);
        }
        tracing::debug!(writer = self.index, "writer stopped");
    }

    /// Adds what is already queued until the batch is full. A request's entries are never
    /// split, so a batch exceeds `max_batch` by at most one request.
    fn take_queued(&mut self, jobs: &mut Vec<Job>, count: &mut usize) {
        while *count < self.settings.max_batch {
            match self.rx.try_recv() {
                Ok(job) => {
                    *count += job.entries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
    }

    /// Gives publishers up to `linger` to add to a batch that is not full. With the default
    /// of zero, batches form on their own while the previous pipeline is in flight.
    async fn linger(&mut self, jobs: &mut Vec<Job>, count: &mut usize) {
        if self.settings.linger.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.settings.linger;
        while *count < self.settings.max_batch {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(job)) => {
                    *count += job.entries.len();
                    jobs.push(job);
                    self.take_queued(jobs, count);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    async fn flush(&mut self, jobs: &mut Vec<Job>) {
        fail::fail_point!("writer-flush");
        // A caller that has already given up (timed out, or refused as a whole because
        // another writer was full) has been told 503: do not write its entries.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            return;
        }
        let count: usize = jobs.iter().map(|job| job.entries.len()).sum();
        let mut pipe = redis::Pipeline::with_capacity(count);
        // One entry's error (say, a key of the wrong type) must not fail the others.
        pipe.ignore_errors();
        for job in jobs.iter() {
            // A request of several entries is written whole or not at all: when Redis is
            // full, a transaction is refused before any of it is applied.
            let atomic = job.entries.len() > 1;
            if atomic {
                pipe.cmd("MULTI");
            }
            for entry in &job.entries {
                match &entry.dedup_key {
                    Some(dedup_key) => {
                        let window_ms = entry
                            .stream
                            .dedup_window
                            .map(|w| w.as_millis().max(1) as u64)
                            .unwrap_or(1);
                        pipe.cmd("EVAL")
                            .arg(DEDUP_APPEND)
                            .arg(2)
                            .arg(&*entry.partition_key)
                            .arg(dedup_key)
                            .arg(window_ms)
                            .arg(&entry.value);
                    }
                    None => {
                        // Sized once: growing each command while adding the envelope
                        // copied it again and again.
                        let size = entry.value.len() + entry.partition_key.len() + 64;
                        let mut cmd = redis::Cmd::with_capacity(8, size);
                        cmd.arg("XADD")
                            .arg(&*entry.partition_key)
                            .arg("*")
                            .arg(ENTRY_FIELD)
                            .arg(&entry.value);
                        pipe.add_command(cmd);
                    }
                }
            }
            if atomic {
                pipe.cmd("EXEC");
            }
        }
        let result: Result<Vec<Value>, StoreError> = match tokio::time::timeout(
            self.settings.response_timeout,
            pipe.query_async(&mut self.conn),
        )
        .await
        {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(err)) => Err(StoreError::from(err)),
            Err(_) => Err(StoreError::Timeout),
        };
        match result {
            Ok(values) => {
                let mut values = values.into_iter();
                for job in jobs.drain(..) {
                    let answers = if job.entries.len() > 1 {
                        transaction_replies(&mut values, &job.entries)
                    } else {
                        job.entries
                            .iter()
                            .map(|entry| parse_reply(values.next(), entry.dedup_key.is_some()))
                            .collect()
                    };
                    let _ = job.reply.send(answers);
                }
            }
            Err(err) => {
                tracing::warn!(writer = self.index, error = %err, "pipeline failed");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// The replies of one request's transaction: MULTI's, one per queued entry (an error
/// when Redis refused to queue it), and EXEC's (the entries' replies, or an abort).
fn transaction_replies(
    values: &mut impl Iterator<Item = Value>,
    entries: &[Entry],
) -> Result<Vec<Appended>, StoreError> {
    let _multi = values.next();
    let mut refused = None;
    for _ in entries {
        if let Some(Value::ServerError(err)) = values.next() {
            refused.get_or_insert(err);
        }
    }
    let exec = values.next();
    if let Some(err) = refused {
        return Err(super::classify_server_error(
            err.code(),
            &format!("{err:?}"),
        ));
    }
    match exec {
        Some(Value::Array(replies)) if replies.len() == entries.len() => replies
            .into_iter()
            .zip(entries)
            .map(|(reply, entry)| parse_reply(Some(reply), entry.dedup_key.is_some()))
            .collect(),
        Some(Value::ServerError(err)) => {
            // An abort names its cause after the code: `EXECABORT … because of: OOM …`.
            let text = format!("{err:?}");
            let code = if text.contains("OOM") {
                "OOM"
            } else {
                err.code()
            };
            Err(super::classify_server_error(code, &text))
        }
        other => Err(StoreError::Refused(format!(
            "unexpected transaction reply {other:?}"
        ))),
    }
}

fn parse_reply(value: Option<Value>, dedup: bool) -> Result<Appended, StoreError> {
    let value = value.ok_or_else(|| StoreError::Refused("missing pipeline reply".into()))?;
    match (value, dedup) {
        (Value::BulkString(id), false) => {
            Ok(Appended::New(String::from_utf8_lossy(&id).into_owned()))
        }
        (Value::SimpleString(id), false) => Ok(Appended::New(id)),
        (Value::Array(parts), true) => match parts.as_slice() {
            [Value::Int(flag), Value::BulkString(id)] => {
                let id = String::from_utf8_lossy(id).into_owned();
                Ok(if *flag == 1 {
                    Appended::New(id)
                } else {
                    Appended::Duplicate(id)
                })
            }
            other => Err(StoreError::Refused(format!(
                "unexpected dedup reply {other:?}"
            ))),
        },
        (Value::ServerError(err), _) => Err(super::classify_server_error(
            err.code(),
            &format!("{err:?}"),
        )),
        (other, _) => Err(StoreError::Refused(format!("unexpected reply {other:?}"))),
    }
}
