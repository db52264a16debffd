//! Storage bounds of a stream: its size in Redis, and the `drop_oldest` move of what a
//! subscription has not acked below a trim point to the subscription's dead-letter stream
//! (reason `retention`), so that trimming never drops an event silently.

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use super::dlq::{dlq_append_lua, dlq_key};

/// Moves what group ARGV[1] has not acked below ARGV[2] (exclusive) from the stream KEYS[1]
/// to the dead-letter stream KEYS[2]: pending entries are appended there and acked,
/// unread ones appended and the group moved past them. At most ARGV[3] entries a call.
/// ARGV[4]: the dead-letter stream's cap (0: none); ARGV[5]: `block` (refuse when full,
/// returning -2) or `drop_oldest` (trim the oldest dead letters). Returns the number moved.
const MOVE_UNACKED: &str = concat!(
    "#!lua flags=allow-oom",
    dlq_append_lua!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[4])
local moved = 0
local function dead_letter(id, envelope, attempts)
  return append_dead_letter(KEYS[2], cap, ARGV[5], {'e', envelope, 'source_id', id,
    'partition', KEYS[1], 'reason', 'retention', 'attempts', attempts,
    'first_attempt_ms', now, 'last_attempt_ms', now})
end
local function envelope_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then return fields[i + 1] end
  end
  return ''
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '(' .. ARGV[2], ARGV[3])
for _, p in ipairs(pending) do
  local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])
  if entry[1] then
    if not dead_letter(p[1], envelope_of(entry[1][2]), p[4]) then return -2 end
  end
  redis.call('XACK', KEYS[1], ARGV[1], p[1])
  moved = moved + 1
end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
if not last then return moved end
local unread = redis.call('XRANGE', KEYS[1], '(' .. last, '(' .. ARGV[2], 'COUNT', ARGV[3])
local newest = nil
for _, e in ipairs(unread) do
  if not dead_letter(e[1], envelope_of(e[2]), 0) then
    if newest then redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], newest) end
    return -2
  end
  newest = e[1]
  moved = moved + 1
end
if newest then redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], newest) end
return moved
"
);

/// The millisecond part of a stream id (`1700000000000-3` → `1700000000000`).
pub fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Most entries one move call takes.
const MOVE_BATCH: usize = 1000;

/// One partition's size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Size {
    /// Entries.
    pub len: u64,
    /// Bytes Redis reports for the key (sampled).
    pub bytes: u64,
    /// Millisecond part of the first and last entry's ids.
    pub first_ms: u64,
    /// See `first_ms`.
    pub last_ms: u64,
}

/// Reads a partition's size (zero when it does not exist).
pub async fn size(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<Size> {
    let (len, first, last, bytes): (u64, StreamRangeReply, StreamRangeReply, Option<u64>) =
        redis::pipe()
            .cmd("XLEN")
            .arg(key)
            .cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(conn)
            .await?;
    let ms = |reply: &StreamRangeReply| reply.ids.first().and_then(|e| id_ms(&e.id)).unwrap_or(0);
    Ok(Size {
        len,
        bytes: bytes.unwrap_or(0),
        first_ms: ms(&first),
        last_ms: ms(&last),
    })
}

/// The millisecond id below which entries go so that `keep` of `size.len` entries remain,
/// assuming entries spread evenly over time (ids are times).
pub fn trim_point(size: &Size, keep: u64) -> u64 {
    if size.len == 0 || keep >= size.len {
        return size.first_ms;
    }
    let drop = (size.len - keep) as f64 / size.len as f64;
    let span = size.last_ms.saturating_sub(size.first_ms) as f64;
    size.first_ms + (span * drop).ceil() as u64
}

/// What a move found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// This many entries went to the dead-letter stream.
    Entries(u64),
    /// The dead-letter stream is full under `block`: nothing more can go.
    DeadLettersFull,
}

/// Moves everything `group` has not acked below `below_ms` in `partition` to its
/// dead-letter stream; returns how many entries moved.
pub async fn move_unacked(
    conn: &mut ConnectionManager,
    partition: &str,
    group: &str,
    below_ms: u64,
    dlq_cap: u64,
    dlq_block: bool,
) -> redis::RedisResult<Moved> {
    let mut total = 0;
    loop {
        let moved: i64 = redis::cmd("EVAL")
            .arg(MOVE_UNACKED)
            .arg(2)
            .arg(partition)
            .arg(dlq_key(partition, group))
            .arg(group)
            .arg(format!("{below_ms}-0"))
            .arg(MOVE_BATCH)
            .arg(dlq_cap)
            .arg(if dlq_block { "block" } else { "drop_oldest" })
            .query_async(conn)
            .await?;
        if moved < 0 {
            return Ok(Moved::DeadLettersFull);
        }
        total += moved as u64;
        if (moved as usize) < MOVE_BATCH {
            return Ok(Moved::Entries(total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trim_point_keeps_the_newest_share() {
        let size = Size {
            len: 1000,
            bytes: 0,
            first_ms: 1_000,
            last_ms: 2_000,
        };
        assert_eq!(trim_point(&size, 1000), 1_000);
        assert_eq!(trim_point(&size, 250), 1_750);
        assert_eq!(trim_point(&size, 0), 2_000);
        assert_eq!(trim_point(&Size::default(), 5), 0);
    }
}
