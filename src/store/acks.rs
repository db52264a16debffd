//! Acks, dead letters and sequence state. Acks are batched per partition (one plain XACK
//! with many ids): an ack only ever records a delivery that happened, so it stays right even
//! from an instance that has just lost the partition (the new owner may deliver the entry
//! again, which at-least-once allows). A dead letter is appended and acked in one script
//! fenced by the partition lease, so an event is always in exactly one of the two places and
//! only the owner moves it. Sequence state is written by one script per partition and
//! batch, fenced by the lease when it runs and moving each key's number only forward: a
//! former owner's late batch changes nothing. The scripts run when Redis is out of memory
//! (`allow-oom`): they free or hold memory, and must not stall delivery when publishes are
//! refused.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, Semaphore};

use super::dlq::{dlq_append_lua, dlq_key};
use super::lease::lease_key;
use super::sequence::SEQUENCE_STATE_TTL;
use crate::health::Part;
use crate::metrics::RoundTrip;
use crate::model::dead_letter::Failure;
use crate::model::envelope::ENTRY_FIELD;

/// Appends ARGV[6..] as a DLQ entry to KEYS[3] and acks ARGV[3], if the lease is held
/// (else -1). ARGV[4]: the DLQ's cap (0: none); ARGV[5]: `block` (a full DLQ refuses, -2,
/// and the event stays pending) or `drop_oldest` (its oldest dead letters are trimmed).
const FENCED_DEAD_LETTER: &str = concat!(
    "#!lua flags=allow-oom",
    dlq_append_lua!(),
    r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
if not append_dead_letter(KEYS[3], tonumber(ARGV[4]), ARGV[5], fields) then return -2 end
return redis.call('XACK', KEYS[1], ARGV[2], ARGV[3])
"
);

/// How big a dead-letter stream may grow, and what it does then.
#[derive(Debug, Clone, Copy)]
pub struct DlqBound {
    /// Most entries (0: no bound).
    pub max_len: u64,
    /// Refuse when full (else drop the oldest).
    pub block: bool,
}

impl Default for DlqBound {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            block: true,
        }
    }
}

/// Records next expected sequence numbers, if the lease (KEYS[1]) is held by ARGV[1]:
/// KEYS[i] gets ARGV[i + 1] (i >= 2) unless it already holds a number at least as high;
/// ARGV[2] is the state's TTL in ms. Returns -1 when the lease is not held.
const FENCED_ADVANCE: &str = r"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 2, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if current < tonumber(ARGV[i + 1]) then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[2])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 0
";

/// Most ids in one XACK.
const MAX_IDS_PER_ACK: usize = 1000;

/// Most acks and dead letters written in one pipeline.
const MAX_BATCH: usize = 8192;

/// How long acks gather before they are written (delivery does not wait for it).
const ACK_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// What to do with a finished entry.
#[derive(Debug)]
pub enum AckOp {
    /// Ack it.
    Ack {
        /// Partition key.
        partition: Arc<str>,
        /// Entry id.
        id: String,
    },
    /// Records the next expected sequence number of a key under sequence ordering (holds no
    /// read permit).
    Advance {
        /// Partition key (the write is fenced by its lease).
        partition: Arc<str>,
        /// The state key (`sequence_state_key`).
        key: String,
        /// The next number expected.
        next: u64,
    },
    /// Move it to the DLQ and ack it, in one step.
    DeadLetter {
        /// Partition key.
        partition: Arc<str>,
        /// Entry id.
        id: String,
        /// The stored entry.
        raw: bytes::Bytes,
        /// Why.
        failure: Failure,
    },
    /// Runs once everything queued before it is written (or given up), holding no permit.
    Barrier(Barrier),
}

/// What to run once the acks queued before it are written.
pub struct Barrier(pub Box<dyn FnOnce() + Send + Sync>);

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Barrier")
    }
}

/// Writes batched acks and fenced dead letters for one subscription, then frees the read
/// permit of each entry.
pub struct Acker {
    part: Arc<Part>,
    dlq: DlqBound,
    conn: ConnectionManager,
    group: String,
    instance: String,
    rx: mpsc::Receiver<AckOp>,
    permits: Arc<Semaphore>,
    round_trip: Option<RoundTrip>,
}

impl Acker {
    /// An acker reading from `rx`.
    pub fn new(
        conn: ConnectionManager,
        group: String,
        instance: String,
        rx: mpsc::Receiver<AckOp>,
        permits: Arc<Semaphore>,
        part: Arc<Part>,
    ) -> Self {
        Self {
            part,
            dlq: DlqBound::default(),
            conn,
            group,
            instance,
            rx,
            permits,
            round_trip: None,
        }
    }

    /// Records each flush's time and size.
    pub fn with_round_trip(mut self, round_trip: RoundTrip) -> Self {
        self.round_trip = Some(round_trip);
        self
    }

    /// Bounds the dead-letter streams it writes.
    pub fn with_dlq_bound(mut self, dlq: DlqBound) -> Self {
        self.dlq = dlq;
        self
    }

    /// Runs until every sender is gone, flushing whatever has queued after each wake-up.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // Gather a little longer, so that each partition's acks go in one call: with
            // many partitions, acking every wake-up would cost a call per partition each
            // time.
            let deadline = tokio::time::Instant::now() + ACK_LINGER;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                let more = self.rx.recv_many(&mut batch, room);
                match tokio::time::timeout_at(deadline, more).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            // Every op but `Advance` and `Barrier` holds a read permit, freed once it is
            // written.
            let done = batch
                .iter()
                .filter(|op| matches!(op, AckOp::Ack { .. } | AckOp::DeadLetter { .. }))
                .count();
            let mut attempt = 0;
            let part = self.part.clone();
            let started = std::time::Instant::now();
            loop {
                // Entries whose ack is lost stay pending to this consumer and are not read
                // again until the partition changes hands: keep trying while running (a
                // panicked write too, after the part's backoff); at shutdown give up after
                // a few tries.
                let failed = match part.round(self.flush(&batch)).await {
                    Some(Ok(())) => break,
                    Some(Err(err)) => err.to_string(),
                    None => "the write panicked".to_string(),
                };
                if attempt < 3 || !self.rx.is_closed() {
                    attempt += 1;
                    tracing::warn!(error = %failed, "ack failed; retrying");
                    let backoff = (100 * attempt).min(2000);
                    tokio::time::sleep(std::time::Duration::from_millis(backoff)).await;
                } else {
                    // The entries stay pending and are delivered again: at least once.
                    tracing::warn!(error = %failed, "ack failed; entries stay pending");
                    break;
                }
            }
            if let Some(round_trip) = &self.round_trip {
                round_trip.record(started, batch.len());
            }
            for op in batch.drain(..) {
                if let AckOp::Barrier(Barrier(then)) = op {
                    then();
                }
            }
            self.permits.add_permits(done);
        }
    }

    async fn flush(&mut self, batch: &[AckOp]) -> redis::RedisResult<()> {
        fail::fail_point!("acker-flush");
        let mut by_partition: HashMap<&Arc<str>, Vec<&str>> = HashMap::new();
        let mut advances: HashMap<&Arc<str>, HashMap<&str, u64>> = HashMap::new();
        let mut pipe = redis::pipe();
        for op in batch {
            match op {
                AckOp::Advance {
                    partition,
                    key,
                    next,
                } => {
                    // The latest of a key wins (a shard sends them in order).
                    advances.entry(partition).or_default().insert(key, *next);
                }
                AckOp::Barrier(_) => {}
                AckOp::Ack { partition, id } => {
                    by_partition.entry(partition).or_default().push(id);
                }
                AckOp::DeadLetter {
                    partition,
                    id,
                    raw,
                    failure,
                } => {
                    self.dead_letter_cmd(&mut pipe, partition, id, raw, failure);
                }
            }
        }
        for (partition, ids) in &by_partition {
            for chunk in ids.chunks(MAX_IDS_PER_ACK) {
                pipe.cmd("XACK")
                    .arg(&***partition)
                    .arg(&self.group)
                    .arg(chunk);
            }
        }
        // After the acks in the same pipeline: a number is recorded once its events are done.
        for (partition, keys) in &advances {
            let cmd = pipe
                .cmd("EVAL")
                .arg(FENCED_ADVANCE)
                .arg(keys.len() + 1)
                .arg(lease_key(partition));
            for key in keys.keys() {
                cmd.arg(*key);
            }
            cmd.arg(&self.instance)
                .arg(SEQUENCE_STATE_TTL.as_millis() as u64);
            for next in keys.values() {
                cmd.arg(*next);
            }
        }
        if pipe.is_empty() {
            return Ok(());
        }
        let results: Vec<i64> = pipe.query_async(&mut self.conn).await?;
        if results.contains(&-1) {
            tracing::info!(group = %self.group, "dead letters or sequence state refused: a partition's lease moved to another instance");
        }
        if results.contains(&-2) {
            tracing::warn!(group = %self.group, "dead-letter stream full: events stay pending and are delivered again when their partition is next taken");
        }
        Ok(())
    }
}

impl Acker {
    /// Adds the fenced "append to the DLQ and ack" script for one entry to a pipeline.
    fn dead_letter_cmd(
        &self,
        pipe: &mut redis::Pipeline,
        partition: &str,
        id: &str,
        envelope: &[u8],
        failure: &Failure,
    ) {
        let (dlq, instance, subscription) = (self.dlq, self.instance.as_str(), self.group.as_str());
        let cmd = pipe
            .cmd("EVAL")
            .arg(FENCED_DEAD_LETTER)
            .arg(3)
            .arg(partition)
            .arg(lease_key(partition))
            .arg(dlq_key(partition, subscription))
            .arg(instance)
            .arg(subscription)
            .arg(id)
            .arg(dlq.max_len)
            .arg(if dlq.block { "block" } else { "drop_oldest" })
            .arg(ENTRY_FIELD)
            .arg(envelope)
            .arg("source_id")
            .arg(id)
            .arg("partition")
            .arg(partition)
            .arg("reason")
            .arg(&failure.reason)
            .arg("attempts")
            .arg(failure.attempts)
            .arg("first_attempt_ms")
            .arg(failure.first_attempt_ms)
            .arg("last_attempt_ms")
            .arg(failure.last_attempt_ms);
        if let Some(status) = failure.last_status {
            cmd.arg("last_status").arg(status);
        }
        if let Some(error) = &failure.last_error {
            cmd.arg("last_error").arg(error);
        }
    }
}
