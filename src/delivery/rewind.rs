//! Rewinding a subscription to a time: its consumer group on every partition is made again
//! just before the first entry stored at that time (forgetting what it had read and not
//! acked), and every instance restarts the subscription's delivery, so that lanes start
//! empty and events flow again from there in order per key. Kafka users know this as
//! resetting a group's offsets to a timestamp.
//!
//! A subscription ordered by sequence keeps each key's next expected number; the rewind's
//! count is the generation of those numbers (`store::sequence`), so after it a key starts
//! again at its first rewound event, whatever deliveries still running elsewhere write.

use serde::Serialize;

use super::Runtime;
use crate::store::groups::reset_group;

/// What a rewind did.
#[derive(Debug, Clone, Serialize)]
pub struct Rewound {
    /// The subscription.
    pub subscription: String,
    /// Partitions whose group was moved.
    pub partitions: usize,
    /// Where each group now stands: just before this stream id.
    pub from_id: String,
}

/// Why a rewind was refused.
#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    /// No subscription of that name.
    #[error("no subscription named `{0}`")]
    Unknown(String),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The last id a group at `ms` has read: the greatest id before `{ms}-0`.
pub fn group_id_before(ms: u64) -> String {
    match ms {
        0 => "0".into(),
        ms => format!("{}-{}", ms - 1, u64::MAX),
    }
}

impl Runtime {
    /// Moves `name` to the entries stored at or after `to_ms` (ms since the epoch) on
    /// every partition it reads, and restarts its delivery on every instance.
    pub async fn rewind(&self, name: &str, to_ms: u64) -> Result<Rewound, RewindError> {
        let sub = self
            .registry
            .get(name)
            .ok_or_else(|| RewindError::Unknown(name.to_string()))?;
        let after = group_id_before(to_ms);
        let mut conn = self.target.manager().map_err(super::store_to_redis)?;
        let partitions = self.candidates(&sub);
        for key in &partitions {
            reset_group(&mut conn, key, name, &after).await?;
        }
        self.registry.bump_rewinds(name).await?;
        self.changed.notify_one();
        tracing::info!(subscription = %name, partitions = partitions.len(), from = %after, "subscription rewound");
        Ok(Rewound {
            subscription: name.to_string(),
            partitions: partitions.len(),
            from_id: after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_becomes_the_id_just_before_it() {
        assert_eq!(group_id_before(0), "0");
        assert_eq!(group_id_before(1000), "999-18446744073709551615");
    }
}
