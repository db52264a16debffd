//! Partition ownership: every instance announces itself with a heartbeat, computes which
//! partitions it should own (rendezvous hashing over the live instances, so shares are even
//! and move little when instances come and go), and holds a lease key with a TTL on each.
//! A lease is renewed while owned and released on shutdown; an instance that stops renewing
//! (killed, paused) loses its partitions to the others within the TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64;

/// One partition's lease round. ARGV: instance, TTL ms, `take` or `release`. `take`
/// renews a lease this instance holds or acquires a free one; returns 1 when the instance
/// holds the lease afterwards. `release` deletes it if held.
const LEASE: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if current == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Releases a lease only if this instance holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The Redis key of a partition's lease: same hash tag as the partition.
pub fn lease_key(partition_key: &str) -> String {
    format!("{partition_key}:lease")
}

/// The partitions this instance holds, with the time each lease is safe until (its last
/// renewal plus the TTL, less a margin for clock drift).
#[derive(Debug, Clone, Default)]
pub struct Owned {
    /// Per partition: valid until, and the tenure it belongs to.
    leases: HashMap<Arc<str>, (Instant, u64)>,
}

impl Owned {
    /// Whether the partition is held and its lease still valid now.
    pub fn holds(&self, partition_key: &str) -> bool {
        self.leases
            .get(partition_key)
            .is_some_and(|(until, _)| *until > Instant::now())
    }

    /// The tenure of a held partition: a number that changes whenever the partition is
    /// taken anew, including after a lapse of its local validity (a late renewal). What
    /// was dropped from memory in a lapse is read again under the new tenure.
    pub fn tenure(&self, partition_key: &str) -> Option<u64> {
        self.leases.get(partition_key).map(|(_, tenure)| *tenure)
    }

    /// Every partition held.
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
}

/// Keeps this instance's leases; publishes the owned set on a watch channel.
pub struct LeaseKeeper {
    conn: ConnectionManager,
    instance: String,
    settings: LeaseSettings,
    owned: HashMap<Arc<str>, (Instant, u64)>,
    /// The last tenure number given.
    tenures: u64,
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
                owned: HashMap::new(),
                tenures: 0,
                tx,
            },
            rx,
        )
    }

    fn registry_key(&self) -> String {
        format!("{}:instances", self.settings.prefix)
    }

    /// One round: heartbeat, read live instances, renew, acquire and release leases.
    pub async fn tick(&mut self, partitions: &[Arc<str>]) -> redis::RedisResult<()> {
        let now_ms = crate::model::clock::now_ms();
        let ttl_ms = self.settings.ttl.as_millis() as u64;
        let registry = self.registry_key();
        let (_, _, live): ((), (), Vec<String>) = redis::pipe()
            .cmd("ZADD")
            .arg(&registry)
            .arg(now_ms)
            .arg(&self.instance)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&registry)
            .arg("-inf")
            .arg(now_ms.saturating_sub(ttl_ms))
            .cmd("ZRANGE")
            .arg(&registry)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await?;
        // One round trip for every partition: take or keep what this instance should own,
        // give back what it should not.
        let started = Instant::now();
        let valid_until = started + self.settings.ttl.mul_f64(0.8);
        let mut pipe = redis::pipe();
        let mut asked = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let desired = owner_of(partition, &live) == Some(self.instance.as_str());
            let held = self.owned.contains_key(partition);
            let mode = match (desired, held) {
                (true, _) => "take",
                (false, true) => "release",
                (false, false) => continue,
            };
            pipe.cmd("EVAL")
                .arg(LEASE)
                .arg(1)
                .arg(lease_key(partition))
                .arg(&self.instance)
                .arg(ttl_ms)
                .arg(mode);
            asked.push((partition.clone(), desired, held));
        }
        let results: Vec<i64> = if asked.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await?
        };
        let mut next = HashMap::with_capacity(asked.len());
        for ((partition, desired, held), holds) in asked.into_iter().zip(results) {
            match (desired, holds == 1) {
                (true, true) => {
                    if !held {
                        tracing::debug!(partition = %partition, "lease acquired");
                    }
                    // Still within its validity: the same tenure; new, or lapsed (the
                    // shards may have let its events go meanwhile): a new one.
                    let tenure = match self.owned.get(&partition) {
                        Some((until, tenure)) if *until > started => *tenure,
                        _ => {
                            self.tenures += 1;
                            self.tenures
                        }
                    };
                    next.insert(partition, (valid_until, tenure));
                }
                (true, false) if held => tracing::warn!(partition = %partition, "lease lost"),
                (false, _) => tracing::debug!(partition = %partition, "lease released"),
                _ => {}
            }
        }
        self.owned = next;
        self.tx.send_replace(Arc::new(Owned {
            leases: self.owned.clone(),
        }));
        Ok(())
    }

    async fn release_one(&mut self, partition: &str) -> redis::RedisResult<()> {
        let _: i64 = redis::Script::new(RELEASE)
            .key(lease_key(partition))
            .arg(&self.instance)
            .invoke_async(&mut self.conn)
            .await?;
        tracing::debug!(partition = %partition, "lease released");
        Ok(())
    }

    /// Releases every lease and leaves the instance registry.
    pub async fn release_all(&mut self) {
        let partitions: Vec<Arc<str>> = self.owned.keys().cloned().collect();
        self.owned.clear();
        self.tx.send_replace(Arc::new(Owned::default()));
        for partition in partitions {
            if let Err(err) = self.release_one(&partition).await {
                tracing::warn!(error = %err, "could not release a lease; it will expire");
            }
        }
        let registry = self.registry_key();
        let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(registry)
            .arg(&self.instance)
            .query_async(&mut self.conn)
            .await;
        if let Err(err) = removed {
            tracing::warn!(error = %err, "could not leave the instance registry");
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
