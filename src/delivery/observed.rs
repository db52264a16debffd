//! What the metrics read from Redis about the subscriptions (lag in entries and seconds,
//! dead letters) and about Redis (memory, whether it answers): refreshed every
//! [`OBSERVE_EVERY`] by one task on one connection, and read from memory by every scrape.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Runtime;
use crate::model::clock::now_ms;
use crate::model::sync::lock;
use crate::store::gauges::{self, GroupState};

/// How often the state is read from Redis.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// The last reading.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Per subscription (those running on this instance).
    pub groups: BTreeMap<String, GroupState>,
    /// Redis's memory used and its `maxmemory` (0: unbounded).
    pub memory: Option<(u64, u64)>,
    /// Whether Redis answered the last reading.
    pub redis_up: bool,
    /// The live instances and how many partitions each holds (from Redis).
    pub holders: BTreeMap<String, usize>,
    /// When it was taken (ms since the epoch); 0 before the first.
    pub at_ms: u64,
}

impl Observed {
    /// Seconds since the oldest entry `subscription` has not acked was stored (0 when
    /// nothing is waiting).
    pub fn lag_seconds(&self, subscription: &str) -> Option<f64> {
        let state = self.groups.get(subscription)?;
        Some(match state.oldest_unacked_ms {
            Some(ms) => self.at_ms.saturating_sub(ms) as f64 / 1000.0,
            None => 0.0,
        })
    }
}

impl Runtime {
    /// The last reading of the subscriptions' state in Redis.
    pub fn observed(&self) -> Arc<Observed> {
        lock(&self.observed).clone()
    }

    /// Reads the state every [`OBSERVE_EVERY`] until aborted.
    pub(super) async fn observe(self: Arc<Self>) {
        let mut conn = None;
        let mut tick = tokio::time::interval(OBSERVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if conn.is_none() {
                conn = self.target.manager().ok();
            }
            let Some(conn) = conn.as_mut() else {
                self.record(Observed::default());
                continue;
            };
            let mut reading = Observed {
                at_ms: now_ms(),
                ..Observed::default()
            };
            match gauges::memory(conn).await {
                Ok(memory) => {
                    reading.memory = Some(memory);
                    reading.redis_up = true;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "could not read Redis's memory");
                    self.record(reading);
                    continue;
                }
            }
            let all: Vec<Arc<str>> = self
                .catalog
                .streams()
                .iter()
                .flat_map(|s| s.partition_keys.iter().cloned())
                .collect();
            let registry = format!("{}:instances", self.settings.prefix);
            match gauges::lease_holders(conn, &registry, &all).await {
                Ok(holders) => reading.holders = holders,
                Err(err) => tracing::debug!(error = %err, "could not read the lease holders"),
            }
            let running: Vec<String> = lock(&self.stats).keys().cloned().collect();
            for name in running {
                let Some(sub) = self.registry.get(&name) else {
                    continue;
                };
                let partitions = self.candidates(&sub);
                match gauges::group_state(conn, &partitions, &name).await {
                    Ok(state) => {
                        reading.groups.insert(name, state);
                    }
                    Err(err) => {
                        tracing::debug!(subscription = %name, error = %err, "could not read the subscription's state");
                    }
                }
            }
            self.record(reading);
        }
    }

    fn record(&self, reading: Observed) {
        *lock(&self.observed) = Arc::new(reading);
    }
}
