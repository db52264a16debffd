//! Retention: trim floors that keep every entry a consumer group has not acked, and the task
//! that recomputes them and applies `max_len`.
//!
//! Redis's XADD MINID/MAXLEN trimming removes entries still pending in a group, so the
//! writers never trim above the floor computed here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
use redis::AsyncCommands;

use crate::catalog::StreamCatalog;

/// Per partition, the millisecond part of the oldest entry some group still needs.
/// A partition with no groups has no floor. Writers take a snapshot once per batch
/// (copy-on-write: the trimmer's updates never block them for long).
#[derive(Debug, Default)]
pub struct TrimFloors {
    floors: RwLock<Arc<HashMap<Arc<str>, u64>>>,
}

impl TrimFloors {
    /// The floor of a partition, if a group constrains it.
    pub fn get(&self, partition_key: &str) -> Option<u64> {
        self.snapshot().get(partition_key).copied()
    }

    /// Every floor as it is now.
    pub fn snapshot(&self) -> Arc<HashMap<Arc<str>, u64>> {
        self.floors.read().map(|f| f.clone()).unwrap_or_default()
    }

    fn set(&self, partition_key: &Arc<str>, floor: Option<u64>) {
        let mut floors = crate::model::sync::write(&self.floors);
        let unchanged = floors.get(partition_key).copied() == floor;
        if unchanged {
            return;
        }
        let floors = Arc::make_mut(&mut floors);
        match floor {
            Some(ms) => {
                floors.insert(partition_key.clone(), ms);
            }
            None => {
                floors.remove(partition_key);
            }
        }
    }
}

/// The millisecond part of a stream id (`1700000000000-3` → `1700000000000`).
pub fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// What the groups of one partition allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupState {
    /// Oldest millisecond some group still needs, if any group exists.
    pub floor_ms: Option<u64>,
    /// True when no group has pending or unread entries (so MAXLEN trimming is safe).
    pub all_caught_up: bool,
}

/// Reads a partition's groups and computes its floor.
pub async fn group_state(
    conn: &mut ConnectionManager,
    partition_key: &str,
) -> redis::RedisResult<GroupState> {
    let reply: StreamInfoGroupsReply = match conn.xinfo_groups(partition_key).await {
        Ok(reply) => reply,
        Err(err) if err.to_string().contains("no such key") => {
            return Ok(GroupState {
                floor_ms: None,
                all_caught_up: true,
            })
        }
        Err(err) => return Err(err),
    };
    let mut floor: Option<u64> = None;
    let mut caught_up = true;
    for group in &reply.groups {
        let needed = if group.pending > 0 {
            caught_up = false;
            let pending: StreamPendingReply = conn.xpending(partition_key, &group.name).await?;
            match pending {
                StreamPendingReply::Data(data) => id_ms(&data.start_id),
                _ => id_ms(&group.last_delivered_id),
            }
        } else {
            if group.lag != Some(0) {
                caught_up = false;
            }
            id_ms(&group.last_delivered_id)
        };
        if let Some(ms) = needed {
            floor = Some(floor.map_or(ms, |f: u64| f.min(ms)));
        }
    }
    Ok(GroupState {
        floor_ms: floor,
        all_caught_up: caught_up,
    })
}

/// Recomputes every partition's floor, and applies `max_len` where no group lags.
pub async fn trim_once(
    catalog: &StreamCatalog,
    conn: &mut ConnectionManager,
    floors: &TrimFloors,
) -> redis::RedisResult<()> {
    let mut first_error = None;
    for stream in catalog.streams() {
        for key in &stream.partition_keys {
            let state = match group_state(conn, key).await {
                Ok(state) => state,
                Err(err) => {
                    // Keep the last known floor and go on with the other partitions.
                    first_error.get_or_insert(err);
                    continue;
                }
            };
            floors.set(key, state.floor_ms);
            // The writers trim as they append; this frees memory when nothing is appended
            // (Redis full, or a quiet stream): never above what a group still needs.
            let age_ms =
                crate::model::clock::now_ms().saturating_sub(stream.max_age.as_millis() as u64);
            let floor_ms = state.floor_ms.map_or(age_ms, |group| group.min(age_ms));
            let trimmed: redis::RedisResult<i64> = redis::cmd("XTRIM")
                .arg(&**key)
                .arg("MINID")
                .arg("~")
                .arg(format!("{floor_ms}-0"))
                .query_async(conn)
                .await;
            if let Err(err) = trimmed {
                first_error.get_or_insert(err);
            }
            if let Some(max_len) = stream.max_len {
                if state.all_caught_up {
                    let trimmed: redis::RedisResult<i64> = redis::cmd("XTRIM")
                        .arg(&**key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(max_len)
                        .query_async(conn)
                        .await;
                    if let Err(err) = trimmed {
                        first_error.get_or_insert(err);
                    }
                } else {
                    tracing::debug!(partition = %key, "max_len not applied: a group has not acked");
                }
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Runs [`trim_once`] every `interval` until the task is dropped.
pub async fn run_trimmer(
    catalog: Arc<StreamCatalog>,
    mut conn: ConnectionManager,
    floors: Arc<TrimFloors>,
    interval: Duration,
    part: Arc<crate::health::Part>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checked = part.round(trim_once(&catalog, &mut conn, &floors)).await;
        if let Some(Err(err)) = checked {
            tracing::warn!(error = %err, "retention check failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ms_reads_the_time_part() {
        assert_eq!(id_ms("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(id_ms("0-0"), Some(0));
        assert_eq!(id_ms("x"), None);
    }

    #[test]
    fn floors_are_set_and_cleared() {
        let floors = TrimFloors::default();
        let key: Arc<str> = Arc::from("evr:{order.1}");
        floors.set(&key, Some(5));
        assert_eq!(floors.get("evr:{order.1}"), Some(5));
        floors.set(&key, None);
        assert_eq!(floors.get("evr:{order.1}"), None);
    }
}
