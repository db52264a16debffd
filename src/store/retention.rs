//! Retention: the task that, every check, computes each partition's floor (the oldest entry
//! a consumer group has not acked), trims by age below it, and keeps each stream within its
//! bounds (`max_len`, `max_bytes`, a share of Redis's memory) as its `when_full` says.
//!
//! Redis's MINID/MAXLEN trimming removes entries still pending in a group, so nothing trims
//! above the floor computed here. Appends do not trim: a trim argument on every XADD cost
//! Redis more per event than the whole check does per interval.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
use redis::AsyncCommands;

use super::bounds::{self, id_ms, Moved};
use super::groups::{buried, destroy_group};
use crate::catalog::StreamCatalog;
use crate::config::WhenFull;

/// What the groups of one partition allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupState {
    /// Oldest millisecond some group still needs, if any group exists.
    pub floor_ms: Option<u64>,
    /// True when no group has pending or unread entries.
    pub all_caught_up: bool,
    /// Each group with the oldest millisecond it still needs.
    pub groups: Vec<(String, u64)>,
}

/// Reads a partition's groups and computes its floor. Groups of deleted subscriptions
/// (`buried`) are destroyed, not counted.
pub async fn group_state(
    conn: &mut ConnectionManager,
    partition_key: &str,
    buried: &HashSet<String>,
) -> redis::RedisResult<GroupState> {
    let reply: StreamInfoGroupsReply = match conn.xinfo_groups(partition_key).await {
        Ok(reply) => reply,
        Err(err) if err.to_string().contains("no such key") => {
            return Ok(GroupState {
                all_caught_up: true,
                ..GroupState::default()
            })
        }
        Err(err) => return Err(err),
    };
    let mut state = GroupState {
        all_caught_up: true,
        ..GroupState::default()
    };
    for group in &reply.groups {
        if buried.contains(&group.name) {
            tracing::info!(partition = %partition_key, group = %group.name, "consumer group of a deleted subscription removed");
            destroy_group(conn, partition_key, &group.name).await?;
            // Dead letters written by a delivery that ran on after the delete go with it.
            let _: i64 = redis::cmd("DEL")
                .arg(super::dlq::dlq_key(partition_key, &group.name))
                .query_async(conn)
                .await?;
            continue;
        }
        let needed = if group.pending > 0 {
            state.all_caught_up = false;
            let pending: StreamPendingReply = conn.xpending(partition_key, &group.name).await?;
            match pending {
                StreamPendingReply::Data(data) => id_ms(&data.start_id),
                _ => id_ms(&group.last_delivered_id),
            }
        } else {
            if group.lag != Some(0) {
                state.all_caught_up = false;
            }
            id_ms(&group.last_delivered_id)
        };
        if let Some(ms) = needed {
            state.floor_ms = Some(state.floor_ms.map_or(ms, |f: u64| f.min(ms)));
            state.groups.push((group.name.clone(), ms));
        }
    }
    Ok(state)
}

/// How the trimmer bounds storage.
#[derive(Debug, Clone)]
pub struct TrimSettings {
    /// Key prefix (for the deleted subscriptions' names).
    pub prefix: String,
    /// Share of Redis's `maxmemory` (or, without one, of its machine's memory) for all
    /// streams; split evenly among the streams that set no `max_bytes` of their own.
    pub memory_share: f64,
    /// Most entries in one dead-letter stream.
    pub dlq_max_len: u64,
    /// Whether a full dead-letter stream refuses (else it drops its oldest).
    pub dlq_block: bool,
}

/// Trims XTRIM MINID `~` below `floor_ms`.
async fn trim_below(
    conn: &mut ConnectionManager,
    key: &str,
    floor_ms: u64,
) -> redis::RedisResult<()> {
    let _: i64 = redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg("~")
        .arg(format!("{floor_ms}-0"))
        .query_async(conn)
        .await?;
    Ok(())
}

/// Recomputes every partition's floor and trims by age; where a stream is over a bound
/// (`max_len`, `max_bytes` or its share of Redis's memory), trims its acknowledged history
/// down to the bound, then, for what its subscriptions have not acked, blocks the stream
/// or moves those entries to their dead-letter streams, as its `when_full` says.
pub async fn trim_once(
    catalog: &StreamCatalog,
    conn: &mut ConnectionManager,
    settings: &TrimSettings,
) -> redis::RedisResult<()> {
    let mut first_error = None;
    let buried = match buried(conn, &settings.prefix).await {
        Ok(buried) => buried,
        Err(err) => {
            first_error.get_or_insert(err);
            HashSet::new()
        }
    };
    let streams = catalog.streams();
    // Unknown (INFO not allowed): only the streams' own bounds apply.
    let memory = super::gauges::memory_bound(conn).await.unwrap_or(0);
    let unbounded = streams
        .iter()
        .filter(|s| s.max_bytes.is_none())
        .count()
        .max(1);
    let shared = (settings.memory_share > 0.0 && memory > 0)
        .then(|| (memory as f64 * settings.memory_share) as u64 / unbounded as u64);
    for stream in streams.iter() {
        let max_bytes = stream.max_bytes.or(shared);
        let bounds = Bounds {
            max_len: stream.max_len,
            partition_bytes: max_bytes.map(|b| b / u64::from(stream.partitions.max(1))),
        };
        let mut full = false;
        for key in &stream.partition_keys {
            let checked = async {
                let state = group_state(conn, key, &buried).await?;
                // By age, never above what a group still needs.
                let age_ms = crate::model::clock::now_ms()
                    .saturating_sub(stream.max_age.as_millis() as u64);
                trim_below(conn, key, state.floor_ms.map_or(age_ms, |f| f.min(age_ms))).await?;
                if bounds.max_len.is_none() && bounds.partition_bytes.is_none() {
                    return Ok(false);
                }
                let size = bounds::size(conn, key).await?;
                if !bounds.over(&size) {
                    return Ok(false);
                }
                let point = bounds::trim_point(&size, bounds.keep(&size));
                // Acknowledged history goes first.
                trim_below(conn, key, state.floor_ms.map_or(point, |f| f.min(point))).await?;
                let behind: Vec<&(String, u64)> =
                    state.groups.iter().filter(|(_, needed)| *needed < point).collect();
                if behind.is_empty() {
                    return Ok(false);
                }
                if stream.when_full == WhenFull::Block {
                    tracing::warn!(partition = %key, "stream at its bound with entries not acked: publishes to it are refused until they are");
                    return Ok(true);
                }
                let mut blocked = false;
                for (group, _) in behind {
                    let moved = bounds::move_unacked(
                        conn,
                        key,
                        group,
                        point,
                        settings.dlq_max_len,
                        settings.dlq_block,
                    )
                    .await?;
                    match moved {
                        Moved::Entries(0) => {}
                        Moved::Entries(n) => tracing::warn!(partition = %key, subscription = %group, moved = n, "entries not acked moved to the dead-letter stream (reason retention)"),
                        Moved::DeadLettersFull => {
                            tracing::warn!(partition = %key, subscription = %group, "dead-letter stream full: the stream blocks instead");
                            blocked = true;
                        }
                    }
                }
                let state = group_state(conn, key, &buried).await?;
                trim_below(conn, key, state.floor_ms.map_or(point, |f| f.min(point))).await?;
                Ok::<bool, redis::RedisError>(blocked)
            }
            .await;
            match checked {
                Ok(blocked) => full |= blocked,
                // Go on with the other partitions.
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        stream.full.store(full, Ordering::Relaxed);
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// A stream's bounds per partition.
struct Bounds {
    max_len: Option<u64>,
    partition_bytes: Option<u64>,
}

impl Bounds {
    fn over(&self, size: &bounds::Size) -> bool {
        self.max_len.is_some_and(|max| size.len > max)
            || self.partition_bytes.is_some_and(|max| size.bytes > max)
    }

    /// How many entries to keep: the length bound, and nine tenths of the entries that fit
    /// the byte bound (room before the next check).
    fn keep(&self, size: &bounds::Size) -> u64 {
        let by_len = self.max_len.unwrap_or(u64::MAX);
        let by_bytes = match self.partition_bytes {
            Some(max) if size.bytes > 0 => {
                (size.len as f64 * max as f64 / size.bytes as f64 * 0.9) as u64
            }
            _ => u64::MAX,
        };
        by_len.min(by_bytes)
    }
}

/// Runs [`trim_once`] every `interval` until the task is dropped.
pub async fn run_trimmer(
    catalog: Arc<StreamCatalog>,
    mut conn: ConnectionManager,
    interval: Duration,
    settings: TrimSettings,
    part: Arc<crate::health::Part>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checked = part.round(trim_once(&catalog, &mut conn, &settings)).await;
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
}
