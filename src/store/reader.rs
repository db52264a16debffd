//! The partition reader of one subscription: on its own connection (a blocking read must
//! not stall other commands, and needs a response timeout longer than its BLOCK), it first
//! reclaims the pending entries of every partition it has just taken over, then reads new
//! entries in batches from all the partitions it holds, within the subscription's
//! read-ahead budget. Lost consumer groups (NOGROUP) are created again. New entries are
//! read over a plain connection of the reader's own ([`StreamConn`]), parsed in place.
//!
//! A partition whose previous owner did not hand it over (it died, stalled, or its
//! handoff timed out) may still have requests in flight there: while another consumer has
//! entries pending, nothing of the partition is claimed or read until the subscription's
//! delivery timeout has passed since it was taken, so an older event of a key cannot reach
//! the subscriber after a newer one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamInfoConsumersReply, StreamPendingCountReply};
use redis::Value;
use tokio::sync::{watch, Semaphore};

use super::groups::ensure_group;
use super::lease::Owned;
use super::stream_conn::StreamConn;
use crate::model::envelope::ENTRY_FIELD;

/// Most entries asked for in one read.
const READ_COUNT: usize = 512;

/// Most reads in a row that name only the partitions the read before left entries in,
/// before every partition is named again.
const MAX_FOLLOW_UPS: u32 = 4;

/// How a read went.
#[derive(Debug, Default)]
struct Read {
    /// Entries handed over.
    used: usize,
    /// The partitions that gave as many entries as were asked of them: more may wait.
    truncated: Vec<Arc<str>>,
}

/// One entry read from a partition, holding one permit of the read-ahead budget.
#[derive(Debug)]
pub struct ReadEntry {
    /// Partition key.
    pub partition: Arc<str>,
    /// Stream entry id.
    pub id: String,
    /// The stored entry (an encoded envelope).
    pub raw: Bytes,
    /// How many times Redis had handed it to a consumer before (0 for a new entry).
    pub delivered_before: u32,
}

/// Where a reader hands its entries.
pub trait Dispatch: Send {
    /// Takes one entry (and its permit).
    fn dispatch(&mut self, entry: ReadEntry) -> impl Future<Output = ()> + Send;
}

/// Everything a reader needs.
pub struct Reader<D> {
    /// Its own connection for takeovers and groups (response timeout longer than `block`).
    pub conn: ConnectionManager,
    /// Its own connection for reading new entries (same timeout).
    pub streams: StreamConn,
    /// `(index, count)`: this reader takes the partitions whose key hashes to `index`
    /// among `count` readers, so each partition has one reader.
    pub share: (usize, usize),
    /// The consumer group (the subscription's name).
    pub group: String,
    /// This instance's consumer name.
    pub consumer: String,
    /// Partitions the subscription reads (those this instance holds are read).
    pub partitions: watch::Receiver<Arc<Vec<Arc<str>>>>,
    /// Partitions this instance holds.
    pub owned: watch::Receiver<Arc<Owned>>,
    /// Where entries go.
    pub dispatch: D,
    /// Read-ahead budget.
    pub permits: Arc<Semaphore>,
    /// BLOCK of each read.
    pub block: Duration,
    /// Pause after a read that left nothing waiting (no partition gave all it was asked
    /// for). Each read costs Redis a fixed price per partition it names, so under load,
    /// reads that come back with a handful of entries each cost more than the entries
    /// themselves; a reader that has caught up waits this long before it asks again (the
    /// idea of Kafka's `fetch.max.wait.ms`), and one that is behind reads on at once.
    pub linger: Duration,
    /// Turns true on shutdown.
    pub stop: watch::Receiver<bool>,
    /// Permits owed for entries read beyond the budget (start at 0).
    pub debt: usize,
    /// The newest id read as new from each partition (start empty): a read that brings
    /// an older one means the group was moved back under this reader (a rewind).
    pub newest: HashMap<Arc<str>, (u64, u64)>,
    /// How long after taking a partition that was not handed over its pending entries
    /// wait before they are claimed (the delivery timeout and a margin).
    pub takeover_wait: Duration,
    /// Its watched part: a round that panics is logged and retried.
    pub part: Arc<crate::health::Part>,
    /// Where it says it has no read in flight for a partition being handed over.
    pub handoffs: Arc<dyn super::lease::HandoffBoard>,
    /// Records reads that returned entries (their time includes waiting for the first
    /// entry when the partitions were empty).
    pub round_trip: crate::metrics::RoundTrip,
}

/// Whether a partition's pending entries are claimed.
enum Reclaimed {
    /// Claimed (or none): the partition is read.
    Done,
    /// Its previous owner may still be sending: wait until then.
    WaitUntil(std::time::Instant),
}

impl<D: Dispatch> Reader<D> {
    /// Reads until stopped.
    pub async fn run(mut self) {
        // Partitions whose pending entries were claimed, with the tenure they were claimed
        // in: a partition taken anew (or after a lapse) is claimed again.
        let mut claimed: HashMap<Arc<str>, u64> = HashMap::new();
        // Partitions taken without a handoff, with when their pending entries may be claimed.
        let mut waiting: HashMap<Arc<str>, std::time::Instant> = HashMap::new();
        // Partitions being handed over that this reader has said it is done with.
        let handoff_id = self.handoffs.join();
        let mut confirmed: std::collections::HashSet<Arc<str>> = std::collections::HashSet::new();
        let mut backoff = Duration::from_millis(50);
        // The partitions the last read left entries in, and how many reads in a row have
        // named only those.
        let mut behind: Vec<Arc<str>> = Vec::new();
        let mut follow_ups = 0u32;
        while !*self.stop.borrow() {
            let owned = self.owned.borrow().clone();
            let now = std::time::Instant::now();
            // The last read (if it named a partition now draining) has returned: done.
            if !confirmed.is_empty() || owned.any_draining() {
                confirmed.retain(|p| owned.draining(p));
                for partition in owned.drains() {
                    if confirmed.insert(partition.clone()) {
                        self.handoffs.confirm(partition, handoff_id);
                    }
                }
            }
            let keys: Vec<Arc<str>> = self
                .partitions
                .borrow()
                .iter()
                .filter(|k| owned.holds_at(k, now) && self.takes(k))
                .cloned()
                .collect();
            claimed.retain(|k, tenure| owned.tenure(k) == Some(*tenure));
            if keys.is_empty() {
                tokio::select! {
                    _ = self.owned.changed() => {}
                    _ = self.partitions.changed() => {}
                    _ = self.stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            let mut wait_until: Option<std::time::Instant> = None;
            waiting.retain(|k, _| owned.holds_at(k, now));
            let part = self.part.clone();
            let round = part.round(async {
                let mut readable = Vec::with_capacity(keys.len());
                let now = std::time::Instant::now();
                for key in &keys {
                    if let Some(at) = waiting.get(key).filter(|at| **at > now) {
                        wait_until = Some(wait_until.map_or(*at, |w| w.min(*at)));
                        continue;
                    }
                    if !claimed.contains_key(key) {
                        match self.reclaim(key, owned.taken(key)).await? {
                            Reclaimed::Done => {
                                claimed.insert(key.clone(), owned.tenure(key).unwrap_or(0));
                            }
                            Reclaimed::WaitUntil(at) => {
                                waiting.insert(key.clone(), at);
                                wait_until = Some(wait_until.map_or(at, |w| w.min(at)));
                                continue;
                            }
                        }
                    }
                    readable.push(key.clone());
                }
                if readable.is_empty() {
                    return Ok(None);
                }
                // A partition left with entries is read again at once, alone with the
                // others so left: a read names every partition only when the last left
                // none, or after a few such reads (so the others wait no longer).
                let follow_up: Vec<Arc<str>> = if follow_ups < MAX_FOLLOW_UPS {
                    readable
                        .iter()
                        .filter(|k| behind.contains(k))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                if follow_up.is_empty() {
                    follow_ups = 0;
                    self.read(&readable, true).await.map(Some)
                } else {
                    follow_ups += 1;
                    self.read(&follow_up, false).await.map(Some)
                }
            });
            let started = std::time::Instant::now();
            let Some(result) = round.await else {
                // A panicked round may have left claimed entries undispatched.
                claimed.clear();
                continue;
            };
            if let (Ok(None), Some(at)) = (&result, wait_until) {
                // Every partition held waits for a takeover.
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = self.owned.changed() => {}
                    _ = self.stop.changed() => {}
                }
                continue;
            }
            match result {
                Ok(read) => {
                    let read = read.unwrap_or_default();
                    if read.used > 0 {
                        self.round_trip.record(started, read.used);
                    }
                    backoff = Duration::from_millis(50);
                    behind = read.truncated;
                    if behind.is_empty() && !self.linger.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(self.linger) => {}
                            _ = self.stop.changed() => {}
                        }
                    }
                }
                Err(err) if err.code() == Some("NOGROUP") => {
                    tracing::warn!(group = %self.group, "consumer group lost; creating it again");
                    // Made again from the start: its entries come again on purpose.
                    self.newest.clear();
                    for key in &keys {
                        if let Err(err) = ensure_group(&mut self.conn, key, &self.group, "0").await
                        {
                            tracing::warn!(error = %err, "could not create the consumer group");
                        }
                    }
                    claimed.clear();
                    behind.clear();
                }
                Err(err) => {
                    tracing::warn!(group = %self.group, error = %err, "read failed; retrying");
                    // A read that failed after Redis handed entries over leaves them pending
                    // to this consumer: claim them again (entries already held are skipped).
                    claimed.clear();
                    behind.clear();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.handoffs.leave(handoff_id);
    }

    /// Whether this reader reads the partition `key`.
    fn takes(&self, key: &str) -> bool {
        let (index, count) = self.share;
        count <= 1 || xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % count as u64 == index as u64
    }

    /// Takes `count` permits (at least one, waiting for it); returns how many were taken.
    /// Entries read beyond an earlier budget are paid for first.
    async fn take_permits(&mut self, want: usize) -> usize {
        while self.debt > 0 {
            let owed = self.debt.min(u32::MAX as usize) as u32;
            tokio::select! {
                paid = self.permits.acquire_many(owed) => match paid {
                    Ok(permits) => {
                        permits.forget();
                        self.debt -= owed as usize;
                    }
                    Err(_) => return 0,
                },
                _ = self.stop.changed() => return 0,
            }
        }
        let first = tokio::select! {
            permit = self.permits.acquire() => permit,
            _ = self.stop.changed() => return 0,
        };
        match first {
            Ok(permit) => permit.forget(),
            Err(_) => return 0,
        }
        let mut taken = 1;
        while taken < want {
            match self.permits.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        taken
    }

    /// Reads new entries from `keys` in one call, waiting up to `block` for some when
    /// `wait` (a read that names only partitions left with entries must not wait: they
    /// may have none left, and the others would wait with them).
    async fn read(&mut self, keys: &[Arc<str>], wait: bool) -> redis::RedisResult<Read> {
        let taken = self.take_permits(READ_COUNT).await;
        if taken == 0 {
            return Ok(Read::default());
        }
        // COUNT applies to each partition: spread the budget so the total stays within it
        // (but at least one per partition).
        let per_partition = (taken / keys.len()).max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(per_partition);
        if wait {
            cmd.arg("BLOCK").arg(self.block.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for key in keys {
            cmd.arg(&**key);
        }
        for _ in keys {
            cmd.arg(">");
        }
        let reply = match self.streams.read_streams(&cmd).await {
            Ok(reply) => reply,
            Err(err) => {
                self.permits.add_permits(taken);
                return Err(err);
            }
        };
        let mut used = 0;
        let mut truncated = Vec::new();
        for (key, entries) in reply {
            let Some(partition) = keys.iter().find(|k| k.as_bytes() == &key[..]).cloned() else {
                continue;
            };
            if entries.len() >= per_partition {
                truncated.push(partition.clone());
            }
            // The partition's newest id, looked up once per reply and recorded after.
            let mut newest = self.newest.get(&partition).copied().unwrap_or_default();
            for (id, raw) in entries {
                let id = String::from_utf8_lossy(&id).into_owned();
                let at = parse_id(&id);
                if at <= newest {
                    // Moved back by a rewind, whose restart of the subscription is coming:
                    // leave it pending to this consumer, for the restarted reader to claim,
                    // rather than let this one (with the state of before) act on it.
                    continue;
                }
                newest = at;
                used += 1;
                self.hand_over(&partition, id, raw, 0).await;
            }
            if newest != (0, 0) {
                self.newest.insert(partition, newest);
            }
        }
        // With more partitions than permits a read can return up to one entry per partition
        // beyond the budget; that debt is paid from the budget before the next read.
        if used < taken {
            self.permits.add_permits(taken - used);
        } else if used > taken {
            self.debt += used - taken;
        }
        Ok(Read { used, truncated })
    }

    /// Claims every pending entry of a partition just taken over (from a dead or paused
    /// owner, or from this instance before a restart) and dispatches it first; or, when
    /// another consumer holds entries and the partition was not handed over, says how long
    /// to wait first. `taken`: when the tenure began and whether it was handed over.
    async fn reclaim(
        &mut self,
        key: &Arc<str>,
        taken: Option<(std::time::Instant, bool)>,
    ) -> redis::RedisResult<Reclaimed> {
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&**key)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .query_async(&mut self.conn)
            .await?;
        if pending.ids.is_empty() {
            self.forget_idle_consumers(key).await?;
            return Ok(Reclaimed::Done);
        }
        if let Some((since, false)) = taken {
            let others = pending.ids.iter().any(|p| p.consumer != self.consumer);
            let at = since + self.takeover_wait;
            if others && std::time::Instant::now() < at {
                tracing::info!(group = %self.group, partition = %key, wait = ?self.takeover_wait, "partition taken over without a handoff: waiting out the delivery timeout");
                return Ok(Reclaimed::WaitUntil(at));
            }
        }
        let delivered: HashMap<String, usize> = pending
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered))
            .collect();
        let mut cursor = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&**key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(READ_COUNT)
                .query_async(&mut self.conn)
                .await?;
            for entry in reply.claimed {
                let before = delivered.get(&entry.id).copied().unwrap_or(0) as u32;
                let taken = self.take_permits(1).await;
                if taken == 0 {
                    return Ok(Reclaimed::Done);
                }
                let mut entry = entry;
                let raw = match entry.map.remove(ENTRY_FIELD) {
                    Some(Value::BulkString(bytes)) => Bytes::from(bytes),
                    _ => Bytes::new(),
                };
                self.hand_over(key, entry.id, raw, before).await;
            }
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
        tracing::info!(group = %self.group, partition = %key, "pending entries reclaimed");
        self.forget_idle_consumers(key).await?;
        Ok(Reclaimed::Done)
    }

    /// Removes the group's other consumers that hold nothing pending (earlier instances),
    /// so that consumer names do not pile up with every start.
    async fn forget_idle_consumers(&mut self, key: &Arc<str>) -> redis::RedisResult<()> {
        let consumers: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&**key)
            .arg(&self.group)
            .query_async(&mut self.conn)
            .await?;
        for consumer in consumers.consumers {
            if consumer.pending == 0 && consumer.name != self.consumer {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&**key)
                    .arg(&self.group)
                    .arg(&consumer.name)
                    .query_async(&mut self.conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn hand_over(
        &mut self,
        partition: &Arc<str>,
        id: String,
        raw: Bytes,
        delivered_before: u32,
    ) {
        self.dispatch
            .dispatch(ReadEntry {
                partition: partition.clone(),
                id,
                raw,
                delivered_before,
            })
            .await;
    }
}

/// `ms-seq` as numbers (0-0 when it does not parse).
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
