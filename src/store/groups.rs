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
