//! Writing archived entries back into a partition with the ids they had, after Redis lost
//! its data: one script call a batch, so that an entry Redis refuses (its id is not after
//! the stream's last one: newer entries are there already) is counted and skipped rather
//! than failing the batch.

use redis::aio::ConnectionManager;

/// Appends `entries` (id, stored bytes) to `key` in order, keeping their ids; returns how
/// many were written and how many skipped.
const RESTORE: &str = r#"
local written, skipped = 0, 0
for i = 1, #ARGV, 2 do
  local ok = pcall(redis.call, 'XADD', KEYS[1], ARGV[i], 'e', ARGV[i + 1])
  if ok then written = written + 1 else skipped = skipped + 1 end
end
return {written, skipped}
"#;

/// Writes `entries` back into the partition `key`; (written, skipped).
pub async fn append_with_ids(
    conn: &mut ConnectionManager,
    key: &str,
    entries: &[(String, Vec<u8>)],
) -> redis::RedisResult<(u64, u64)> {
    if entries.is_empty() {
        return Ok((0, 0));
    }
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RESTORE).arg(1).arg(key);
    for (id, bytes) in entries {
        cmd.arg(id).arg(bytes.as_slice());
    }
    cmd.query_async(conn).await
}
