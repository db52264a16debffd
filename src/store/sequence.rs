//! Sequence state: the next expected `metadata.sequence` of each key, per subscription,
//! kept beside the partition (same hash tag) so that a restart or a takeover goes on where
//! the last owner stopped. Written with the acks (see the acker (`acks.rs`)); read back here.

use redis::aio::ConnectionManager;

/// How long the next expected sequence number of a key is kept after its last event.
pub const SEQUENCE_STATE_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Where the next expected sequence number of `key` in a partition is kept for a
/// subscription (same hash tag as the partition), in the subscription's `generation`: its
/// count of rewinds. A rewind starts a new generation, so numbers written by deliveries
/// still running elsewhere at the time of the rewind land in the old one, and the old one
/// expires with its TTL.
pub fn sequence_state_key(
    partition_key: &str,
    subscription: &str,
    generation: i64,
    key: &str,
) -> String {
    match generation {
        0 => format!("{partition_key}:seq:{subscription}:{key}"),
        n => format!("{partition_key}:seq:{subscription}@{n}:{key}"),
    }
}

/// The stored next numbers of `keys` (from [`sequence_state_key`]), in their order; `None`
/// for a key with nothing stored.
pub async fn read_next(
    conn: &mut ConnectionManager,
    keys: &[String],
) -> redis::RedisResult<Vec<Option<u64>>> {
    redis::cmd("MGET").arg(keys).query_async(conn).await
}

/// Deletes every sequence state of `subscription` under `prefix` (all its generations, on
/// every partition); returns how many keys there were.
pub async fn forget(
    conn: &mut ConnectionManager,
    prefix: &str,
    subscription: &str,
) -> redis::RedisResult<u64> {
    let (prefix, name) = (super::glob_escape(prefix), super::glob_escape(subscription));
    let mut forgotten = 0;
    for pattern in [
        format!("{prefix}:{{*}}:seq:{name}:*"),
        format!("{prefix}:{{*}}:seq:{name}@*"),
    ] {
        for keys in super::scan_keys(conn, &pattern, Some("string"))
            .await?
            .chunks(500)
        {
            let removed: u64 = redis::cmd("UNLINK").arg(keys).query_async(conn).await?;
            forgotten += removed;
        }
    }
    Ok(forgotten)
}
