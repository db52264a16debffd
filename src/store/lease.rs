//! Partition ownership: every instance announces itself with a heartbeat, computes which
//! partitions it should own (rendezvous hashing over the live instances, so shares are even
//! and move little when instances come and go), and holds a lease key with a TTL on each.
//!
//! A partition that should move is handed over, not dropped: its owner marks it draining
//! (nothing new is read or sent), keeps renewing the lease while its requests in flight
//! finish and their acks are written, then releases the lease with a handoff mark. A new
//! owner that finds the mark may claim the partition's pending entries at once; one that
//! finds the lease expired (the owner died or stalled) waits out the delivery timeout
//! first. An instance that stops renewing (killed, paused) loses its partitions to the
//! others within the TTL.
//!
//! The heartbeat is stamped with Redis's clock (`TIME`), so an instance whose clock runs
//! ahead cannot keep a dead instance alive in the registry. Every script here runs when
//! Redis is out of memory (`allow-oom`): leases must be kept even when publishes are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64;

/// Heartbeat on Redis's clock: stamps this instance, forgets instances silent for longer
/// than the TTL, and returns the live ones. KEYS: registry. ARGV: instance, TTL ms.
const HEARTBEAT: &str = r"#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// One partition's lease round. ARGV: instance, TTL ms, `take`, `handoff` or `drop`.
/// `take` renews a lease this instance holds (1), or acquires a free one (2) or one
/// handed over (3, its value is the mark `~handoff`); 0 when another instance holds it. `handoff` releases it with the
/// handoff mark, `drop` without (the new owner then waits out the delivery timeout).
const LEASE: &str = r"#!lua flags=allow-oom
local current = redis.call('GET', KEYS[1])
if ARGV[3] ~= 'take' then
  if current == ARGV[1] then
    if ARGV[3] == 'handoff' then
      redis.call('SET', KEYS[1], '~handoff', 'PX', ARGV[2])
    else
      redis.call('DEL', KEYS[1])
    end
  end
  return 0
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current or current == '~handoff' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if current then return 3 end
  return 2
end
return 0
";

/// The Redis key of a partition's lease: same hash tag as the partition.
pub fn lease_key(partition_key: &str) -> String {
    format!("{partition_key}:lease")
}

/// What this instance knows of one partition it holds.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Valid until: the last renewal plus the TTL, less a margin for clock drift.
    until: Instant,
    /// A number that changes whenever the partition is taken anew, including after a
    /// lapse of its local validity (a late renewal).
    tenure: u64,
    /// When this tenure began.
    since: Instant,
    /// Whether the previous owner handed it over (nothing of it can be in flight there).
    handed_over: bool,
    /// Being handed over: nothing new is read or sent.
    draining: bool,
}

/// Leases by partition key (looked up for every read and request: a fast hash).
type Leases = HashMap<Arc<str>, Lease, foldhash::fast::RandomState>;

/// The partitions this instance holds.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    leases: Leases,
    /// How many are being handed over (so that the common case, none, costs no scan).
    draining: usize,
}

impl Owned {
    fn valid(&self, partition_key: &str) -> Option<&Lease> {
        self.valid_at(partition_key, Instant::now())
    }

    fn valid_at(&self, partition_key: &str, now: Instant) -> Option<&Lease> {
        self.leases
            .get(partition_key)
            .filter(|lease| lease.until > now)
    }

    /// Whether the partition is held, its lease still valid now, and not being handed
    /// over: its events may be read and sent.
    pub fn holds(&self, partition_key: &str) -> bool {
        self.holds_at(partition_key, Instant::now())
    }

    /// [`Owned::holds`] at `now`, read once by a caller that asks of many partitions.
    pub fn holds_at(&self, partition_key: &str, now: Instant) -> bool {
        self.valid_at(partition_key, now)
            .is_some_and(|lease| !lease.draining)
    }

    /// Whether the lease is held and valid now, draining or not: what was already sent
    /// may still be recorded (acks, sequence state).
    pub fn leased(&self, partition_key: &str) -> bool {
        self.valid(partition_key).is_some()
    }

    /// Whether the partition is held but its lease's local validity has lapsed (the
    /// keeper could not renew it in time): nothing may be sent until it is renewed, and
    /// nothing needs letting go unless it is lost.
    pub fn lapsed(&self, partition_key: &str) -> bool {
        self.leases
            .get(partition_key)
            .is_some_and(|lease| lease.until <= Instant::now() && !lease.draining)
    }

    /// Whether the partition is being handed over.
    pub fn draining(&self, partition_key: &str) -> bool {
        self.valid(partition_key)
            .is_some_and(|lease| lease.draining)
    }

    /// Whether any partition is being handed over.
    pub fn any_draining(&self) -> bool {
        self.draining > 0
    }

    /// Every partition being handed over.
    pub fn drains(&self) -> impl Iterator<Item = &Arc<str>> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.draining)
            .map(|(key, _)| key)
    }

    /// The tenure of a held partition: a number that changes whenever the partition is
    /// taken anew (acquired, or handed over to this instance), but not when a lease whose
    /// local validity lapsed is renewed: Redis held it for this instance all along.
    pub fn tenure(&self, partition_key: &str) -> Option<u64> {
        self.leases.get(partition_key).map(|lease| lease.tenure)
    }

    /// When the current tenure began, and whether the previous owner handed the partition
    /// over (rather than letting its lease expire).
    pub fn taken(&self, partition_key: &str) -> Option<(Instant, bool)> {
        self.leases
            .get(partition_key)
            .map(|lease| (lease.since, lease.handed_over))
    }

    /// Every partition held (draining ones included).
    pub fn partitions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.leases.keys()
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// Picks, among live instances, the owner of a partition: the highest hash of
/// (instance, partition). Every instance computes the same answer from the same list.
pub fn owner_of<'a>(partition_key: &str, instances: &'a [String]) -> Option<&'a str> {
    instances
        .iter()
        .max_by_key(|instance| {
            let mut bytes = Vec::with_capacity(instance.len() + partition_key.len() + 1);
            bytes.extend_from_slice(instance.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(partition_key.as_bytes());
            xxh3_64(&bytes)
        })
        .map(String::as_str)
}

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// How long a lease lives without renewal.
    pub ttl: Duration,
    /// Key prefix (for the instance registry).
    pub prefix: String,
    /// Longest a handoff waits for requests in flight and their acks (the longest
    /// delivery timeout, and a little more); after it the lease is released unmarked.
    pub drain_limit: Duration,
}

/// Where the parts that read and send (readers, shards) say they are done with a
/// partition being handed over.
pub trait HandoffBoard: Send + Sync {
    /// A part starts: its id.
    fn join(&self) -> u64;
    /// The part has nothing of `partition` in flight (a read, a request, an ack).
    fn confirm(&self, partition: &str, part: u64);
    /// The part stopped: it owes nothing.
    fn leave(&self, part: u64);
}

/// Who knows whether a draining partition's work is done: delivery, which holds the
/// requests in flight and their acks.
pub trait Drains: Send + Sync {
    /// A handoff of `partition` begins.
    fn begin(&self, partition: &Arc<str>);
    /// Whether nothing of `partition` is in flight and every ack is written.
    fn drained(&self, partition: &str) -> bool;
    /// The handoff of `partition` ended (released, lost, or wanted again).
    fn end(&self, partition: &str);
}

/// Keeps this instance's leases; publishes the owned set on a watch channel.
pub struct LeaseKeeper {
    conn: ConnectionManager,
    instance: String,
    settings: LeaseSettings,
    owned: Leases,
    /// Partitions being handed over, with when the handoff began.
    draining: HashMap<Arc<str>, Instant>,
    /// The last tenure number given.
    tenures: u64,
    /// Leaving the cluster: every partition is handed over, none taken.
    leaving: bool,
    tx: watch::Sender<Arc<Owned>>,
}

impl LeaseKeeper {
    /// Creates a keeper for `instance`; the receiver sees every change of the owned set.
    pub fn new(
        conn: ConnectionManager,
        instance: String,
        settings: LeaseSettings,
    ) -> (Self, watch::Receiver<Arc<Owned>>) {
        let (tx, rx) = watch::channel(Arc::new(Owned::default()));
        (
            Self {
                conn,
                instance,
                settings,
                owned: Leases::default(),
                draining: HashMap::new(),
                tenures: 0,
                leaving: false,
                tx,
            },
            rx,
        )
    }

    fn registry_key(&self) -> String {
        format!("{}:instances", self.settings.prefix)
    }

    /// One round: heartbeat, read live instances, renew, acquire, hand over and release
    /// leases. `partitions` are those some subscription reads; `drains` tells when a
    /// partition being handed over has nothing left in flight.
    pub async fn tick(
        &mut self,
        partitions: &[Arc<str>],
        drains: &dyn Drains,
    ) -> redis::RedisResult<()> {
        let ttl_ms = self.settings.ttl.as_millis() as u64;
        let live: Vec<String> = if self.leaving {
            Vec::new()
        } else {
            redis::cmd("EVAL")
                .arg(HEARTBEAT)
                .arg(1)
                .arg(self.registry_key())
                .arg(&self.instance)
                .arg(ttl_ms)
                .query_async(&mut self.conn)
                .await?
        };
        // Held partitions no subscription reads any more are handed over too.
        let mut universe: Vec<Arc<str>> = partitions.to_vec();
        universe.extend(
            self.owned
                .keys()
                .filter(|p| partitions.binary_search(p).is_err())
                .cloned(),
        );
        // One round trip for every partition.
        let started = Instant::now();
        let valid_until = started + self.settings.ttl.mul_f64(0.8);
        let mut pipe = redis::pipe();
        let mut asked = Vec::with_capacity(universe.len());
        for partition in universe {
            let desired = owner_of(&partition, &live) == Some(self.instance.as_str());
            let held = self.owned.contains_key(&partition);
            let mode = match (desired, held) {
                (true, _) => "take",
                (false, false) => continue,
                (false, true) => match self.draining.get(&partition) {
                    None => {
                        drains.begin(&partition);
                        self.draining.insert(partition.clone(), started);
                        "take"
                    }
                    Some(_) if drains.drained(&partition) => "handoff",
                    Some(since) if started.duration_since(*since) >= self.settings.drain_limit => {
                        tracing::warn!(partition = %partition, "handoff timed out with deliveries in flight; the next owner waits out the delivery timeout");
                        "drop"
                    }
                    Some(_) => "take",
                },
            };
            pipe.cmd("EVAL")
                .arg(LEASE)
                .arg(1)
                .arg(lease_key(&partition))
                .arg(&self.instance)
                .arg(ttl_ms)
                .arg(mode);
            asked.push((partition, desired, mode));
        }
        let results: Vec<i64> = if asked.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await?
        };
        let mut next = Leases::with_capacity_and_hasher(asked.len(), Default::default());
        for ((partition, desired, mode), answer) in asked.into_iter().zip(results) {
            let before = self.owned.get(&partition).copied();
            if mode != "take" || answer == 0 {
                if mode == "take" && before.is_some() {
                    tracing::warn!(partition = %partition, "lease lost");
                } else if mode != "take" {
                    tracing::debug!(partition = %partition, mode, "lease released");
                }
                if self.draining.remove(&partition).is_some() {
                    drains.end(&partition);
                }
                continue;
            }
            // Renewed (held in Redis all along, so nobody else can have moved its keys
            // on): the same tenure, even when its local validity lapsed meanwhile (the
            // shards paused it and let nothing go). Taken anew: a new one.
            let lease = match before {
                Some(lease) if answer == 1 => {
                    if lease.until <= started {
                        tracing::info!(partition = %partition, "lease renewed after its local validity lapsed; deliveries resume");
                    }
                    Lease {
                        until: valid_until,
                        ..lease
                    }
                }
                _ => {
                    self.tenures += 1;
                    if before.is_none() {
                        tracing::debug!(partition = %partition, handed_over = answer == 3, "lease acquired");
                    }
                    Lease {
                        until: valid_until,
                        tenure: self.tenures,
                        since: started,
                        // Handed over, or already this instance's in Redis: nothing of
                        // it is in flight elsewhere.
                        handed_over: answer != 2,
                        draining: false,
                    }
                }
            };
            let draining = !desired;
            if !draining && self.draining.remove(&partition).is_some() {
                drains.end(&partition);
            }
            next.insert(partition, Lease { draining, ..lease });
        }
        self.owned = next;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(Owned {
            leases: self.owned.clone(),
            draining: self.owned.values().filter(|lease| lease.draining).count(),
        }));
    }

    /// Leaves the instance registry, so that the others take over this instance's
    /// partitions as it hands them over in the next rounds.
    pub async fn leave(&mut self) {
        self.leaving = true;
        let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(self.registry_key())
            .arg(&self.instance)
            .query_async(&mut self.conn)
            .await;
        if let Err(err) = removed {
            tracing::warn!(error = %err, "could not leave the instance registry");
        }
    }

    /// Sets how long a handoff may wait for requests in flight and their acks.
    pub fn set_drain_limit(&mut self, limit: Duration) {
        self.settings.drain_limit = limit;
    }

    /// Number of partitions held (draining ones included).
    pub fn held(&self) -> usize {
        self.owned.len()
    }

    /// Releases every lease still held (without the handoff mark: whatever may still be
    /// in flight is waited out by the next owner) and leaves the instance registry.
    pub async fn release_all(&mut self) {
        let partitions: Vec<Arc<str>> = self.owned.keys().cloned().collect();
        self.owned.clear();
        self.draining.clear();
        self.publish();
        if !partitions.is_empty() {
            let ttl_ms = self.settings.ttl.as_millis() as u64;
            let mut pipe = redis::pipe();
            for partition in &partitions {
                pipe.cmd("EVAL")
                    .arg(LEASE)
                    .arg(1)
                    .arg(lease_key(partition))
                    .arg(&self.instance)
                    .arg(ttl_ms)
                    .arg("drop")
                    .ignore();
            }
            let released: redis::RedisResult<()> = pipe.query_async(&mut self.conn).await;
            if let Err(err) = released {
                tracing::warn!(error = %err, "could not release leases; they will expire");
            }
        }
        if !self.leaving {
            self.leave().await;
        }
    }

    /// This instance's id (also its consumer name).
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

/// A new random instance id.
pub fn new_instance_id() -> String {
    format!("evr-{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_spread_and_stable() {
        let instances: Vec<String> = (0..3).map(|i| format!("evr-{i}")).collect();
        let partitions: Vec<String> = (0..192).map(|p| format!("evr:{{order.{p}}}")).collect();
        let mut counts = HashMap::new();
        for p in &partitions {
            *counts
                .entry(owner_of(p, &instances).expect("owner"))
                .or_insert(0) += 1;
        }
        for count in counts.values() {
            assert!((40..=90).contains(count), "uneven: {counts:?}");
        }
        // Removing one instance moves only its partitions.
        let two = &instances[..2];
        for p in &partitions {
            let before = owner_of(p, &instances).expect("owner");
            if before != "evr-2" {
                assert_eq!(owner_of(p, two), Some(before));
            }
        }
        assert_eq!(owner_of("x", &[]), None);
    }
}
