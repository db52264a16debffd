//! Consumer groups: one per subscription on every partition it reads, created where the
//! subscription starts, destroyed with it, and asked for its lag.

use redis::aio::ConnectionManager;

/// Creates the consumer group `group` on `key` starting at `start` (`$` or `0`), creating
/// the stream if needed; an existing group is left as it is.
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    start: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Removes the consumer group `group` from `key` (nothing if it is not there).
pub async fn destroy_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(key)
        .arg(group)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Moves `group` on `key` to just after `after` (a stream id, or `0`) in one step: the
/// group is made again there, so that what it had read and not acked is forgotten too.
pub async fn reset_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    after: &str,
) -> redis::RedisResult<()> {
    let _: (i64, String) = redis::pipe()
        .atomic()
        .cmd("XGROUP")
        .arg("DESTROY")
        .arg(key)
        .arg(group)
        .cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg(after)
        .arg("MKSTREAM")
        .query_async(conn)
        .await?;
    Ok(())
}

/// What Redis says of a group's lag on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Entries not read yet.
    Known(u64),
    /// Redis no longer knows (entries were deleted or trimmed around the group's position).
    Unknown,
    /// No such group on the partition.
    NoGroup,
}

/// The lag of `group` on `key`.
pub async fn lag(conn: &mut ConnectionManager, key: &str, group: &str) -> redis::RedisResult<Lag> {
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await?;
    Ok(match groups.groups.iter().find(|g| g.name == group) {
        Some(g) => g.lag.map_or(Lag::Unknown, |lag| Lag::Known(lag as u64)),
        None => Lag::NoGroup,
    })
}

/// The sorted set of deleted subscriptions' names (by deletion time): the trimmer of every
/// instance destroys their groups wherever it finds them, including groups created after
/// the delete (a partition created later, a reader that had not heard of it yet).
pub fn tombstones_key(prefix: &str) -> String {
    format!("{prefix}:deleted")
}

/// How long a deleted subscription's name is remembered.
const TOMBSTONE_TTL_MS: u64 = 24 * 3600 * 1000;

/// Records that subscription `name` was deleted.
pub async fn bury(
    conn: &mut ConnectionManager,
    prefix: &str,
    name: &str,
) -> redis::RedisResult<()> {
    let now = crate::model::clock::now_ms();
    let key = tombstones_key(prefix);
    redis::pipe()
        .cmd("ZADD")
        .arg(&key)
        .arg(now)
        .arg(name)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now.saturating_sub(TOMBSTONE_TTL_MS))
        .ignore()
        .query_async(conn)
        .await
}

/// Forgets that `name` was deleted (a new subscription of that name); true when it was.
pub async fn unbury(
    conn: &mut ConnectionManager,
    prefix: &str,
    name: &str,
) -> redis::RedisResult<bool> {
    let removed: i64 = redis::cmd("ZREM")
        .arg(tombstones_key(prefix))
        .arg(name)
        .query_async(conn)
        .await?;
    Ok(removed > 0)
}

/// Every deleted subscription's name still remembered.
pub async fn buried(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<std::collections::HashSet<String>> {
    redis::cmd("ZRANGE")
        .arg(tombstones_key(prefix))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
}
