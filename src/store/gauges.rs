//! What the metrics show from Redis itself: per subscription, its lag in entries and in
//! seconds (the age of the oldest entry it has not acked, pending or unread) and its
//! dead-letter streams' length; and Redis's memory. Read in a few pipelines per
//! subscription on one connection, by a task that refreshes them every few seconds (see
//! `delivery::observed`), never per scrape.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply};

use super::bounds::id_ms;
use super::dlq::dlq_key;
use super::lease::lease_key;

/// One subscription's state in Redis, over the partitions it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Entries not read yet (`None` when Redis cannot tell for some partition).
    pub lag: Option<u64>,
    /// Entries read and not acked.
    pub pending: u64,
    /// Milliseconds since the epoch of the oldest entry not acked (pending or unread).
    pub oldest_unacked_ms: Option<u64>,
    /// Entries in its dead-letter streams.
    pub dead_letters: u64,
}

/// Reads `group`'s state over `partitions`: two pipelined round trips.
pub async fn group_state(
    conn: &mut ConnectionManager,
    partitions: &[Arc<str>],
    group: &str,
) -> redis::RedisResult<GroupState> {
    let mut pipe = redis::pipe();
    for key in partitions {
        // A partition not created yet answers an error: read it as empty.
        pipe.cmd("EVAL")
            .arg(GROUPS_OR_EMPTY)
            .arg(1)
            .arg(&**key)
            .cmd("XLEN")
            .arg(dlq_key(key, group));
    }
    let answers: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut state = GroupState {
        lag: Some(0),
        ..GroupState::default()
    };
    let mut unread_from = Vec::new();
    let mut pending_in = Vec::new();
    for (key, pair) in partitions.iter().zip(answers.chunks(2)) {
        let [groups, dlq] = pair else { continue };
        state.dead_letters += redis::from_redis_value::<u64>(dlq.clone()).unwrap_or(0);
        let Ok(groups) = redis::from_redis_value::<StreamInfoGroupsReply>(groups.clone()) else {
            continue;
        };
        let Some(g) = groups.groups.iter().find(|g| g.name == group) else {
            continue;
        };
        match (g.lag, state.lag) {
            (Some(lag), Some(total)) => state.lag = Some(total + lag as u64),
            _ => state.lag = None,
        }
        state.pending += g.pending as u64;
        if g.pending > 0 {
            pending_in.push(key.clone());
        }
        if g.lag != Some(0) {
            unread_from.push((key.clone(), g.last_delivered_id.clone()));
        }
    }
    if pending_in.is_empty() && unread_from.is_empty() {
        return Ok(state);
    }
    let mut pipe = redis::pipe();
    for key in &pending_in {
        pipe.cmd("XPENDING").arg(&**key).arg(group);
    }
    for (key, last) in &unread_from {
        pipe.cmd("XRANGE")
            .arg(&**key)
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(1);
    }
    let answers: Vec<redis::Value> = pipe.query_async(conn).await?;
    let (pending, unread) = answers.split_at(pending_in.len().min(answers.len()));
    let mut oldest: Option<u64> = None;
    let mut consider = |id: &str| {
        if let Some(ms) = id_ms(id) {
            oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
        }
    };
    for answer in pending {
        if let Ok(StreamPendingReply::Data(data)) =
            redis::from_redis_value::<StreamPendingReply>(answer.clone())
        {
            consider(&data.start_id);
        }
    }
    for answer in unread {
        if let Ok(range) = redis::from_redis_value::<StreamRangeReply>(answer.clone()) {
            if let Some(first) = range.ids.first() {
                consider(&first.id);
            }
        }
    }
    state.oldest_unacked_ms = oldest;
    Ok(state)
}

/// `XINFO GROUPS`, or no groups when the stream does not exist (instead of an error that
/// would fail the whole pipeline's reply).
const GROUPS_OR_EMPTY: &str = r"#!lua flags=no-writes,allow-oom
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
return redis.call('XINFO', 'GROUPS', KEYS[1])
";

/// Redis's memory: bytes used and `maxmemory` (0 when unbounded).
pub async fn memory(conn: &mut ConnectionManager) -> redis::RedisResult<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok((
        info_field(&info, "used_memory"),
        info_field(&info, "maxmemory"),
    ))
}

/// The memory the streams' shared bound is a share of: Redis's `maxmemory`, or, when it
/// has none, the memory of the machine it runs on (`total_system_memory`), so that a
/// Redis left without a limit is not grown until the machine's out-of-memory killer takes
/// it and every event with it. 0 when neither is known.
pub async fn memory_bound(conn: &mut ConnectionManager) -> redis::RedisResult<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(bound_of(&info))
}

/// [`memory_bound`] read from an `INFO memory` answer.
pub fn bound_of(info: &str) -> u64 {
    match info_field(info, "maxmemory") {
        0 => info_field(info, "total_system_memory"),
        max => max,
    }
}

/// A number of an `INFO` answer (0 when absent).
fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
        .unwrap_or(0)
}

/// The live instances (from the registry at `registry`) and how many of `partitions` each
/// holds the lease of; one pipelined round trip.
pub async fn lease_holders(
    conn: &mut ConnectionManager,
    registry: &str,
    partitions: &[Arc<str>],
) -> redis::RedisResult<std::collections::BTreeMap<String, usize>> {
    let mut pipe = redis::pipe();
    pipe.cmd("ZRANGE").arg(registry).arg(0).arg(-1);
    for key in partitions {
        pipe.cmd("GET").arg(lease_key(key));
    }
    let mut answers: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut holders = std::collections::BTreeMap::new();
    if answers.is_empty() {
        return Ok(holders);
    }
    let live: Vec<String> = redis::from_redis_value(answers.remove(0)).unwrap_or_default();
    for instance in live {
        holders.insert(instance, 0);
    }
    for answer in answers {
        if let Ok(Some(holder)) = redis::from_redis_value::<Option<String>>(answer) {
            // A lease released with the handoff mark belongs to nobody yet.
            if !holder.starts_with('~') {
                *holders.entry(holder).or_insert(0) += 1;
            }
        }
    }
    Ok(holders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_bound_is_maxmemory_else_the_machines_memory() {
        let limited = "# Memory\r\nused_memory:1000\r\ntotal_system_memory:25000000000\r\nmaxmemory:4294967296\r\n";
        assert_eq!(bound_of(limited), 4_294_967_296);
        let unlimited =
            "# Memory\r\nused_memory:1000\r\ntotal_system_memory:25000000000\r\nmaxmemory:0\r\n";
        assert_eq!(bound_of(unlimited), 25_000_000_000);
        assert_eq!(bound_of("# Memory\r\nmaxmemory:0\r\n"), 0);
    }
}
