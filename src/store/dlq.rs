//! Dead-letter streams: a subscription's DLQ beside each partition (`{partition}:dlq:{name}`,
//! same hash tag, so an event moves to the DLQ and is acked in one step, see
//! the acker (`acks.rs`)). Listing walks those keys in a fixed order; a cursor is
//! `{key index}-{entry id}`. Replaying reads them in pages and deletes what was delivered.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::Value;
use serde::Serialize;

use crate::model::dead_letter::DeadLetter;
use crate::model::envelope::{Envelope, ENTRY_FIELD};

/// Most bytes of events in one page of a DLQ listing (a page ends early, with its `next`
/// cursor, rather than pass it).
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Lua shared by the scripts that write dead letters (the acker's fenced move, the
/// retention move): `append_dead_letter(dlq, cap, policy, fields)` appends the
/// field/value list `fields` to `dlq` within `cap` entries (0: no cap); when full, `block`
/// refuses (false) and `drop_oldest` trims the oldest dead letters. A macro, so that each
/// script is one string constant.
macro_rules! dlq_append_lua {
    () => {
        r"
local function append_dead_letter(dlq, cap, policy, fields)
  if cap > 0 and redis.call('XLEN', dlq) >= cap then
    if policy == 'block' then return false end
    redis.call('XADD', dlq, 'MAXLEN', '~', cap, '*', unpack(fields))
  else
    redis.call('XADD', dlq, '*', unpack(fields))
  end
  return true
end
"
    };
}
pub(crate) use dlq_append_lua;

/// The DLQ stream of a subscription for one partition: same hash tag as the partition so
/// the append and the ack are atomic on a cluster too.
pub fn dlq_key(partition_key: &str, subscription: &str) -> String {
    format!("{partition_key}:dlq:{subscription}")
}

/// A page of dead letters.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Entries, oldest first within each partition.
    pub entries: Vec<DeadLetter>,
    /// Cursor for the next page, if there may be more.
    pub next: Option<String>,
}

/// The DLQ keys of a subscription, in a fixed order.
pub fn keys(partitions: &[Arc<str>], subscription: &str) -> Vec<String> {
    let mut keys: Vec<String> = partitions
        .iter()
        .map(|p| dlq_key(p, subscription))
        .collect();
    keys.sort();
    keys
}

fn parse_cursor(cursor: &str) -> Option<(usize, String)> {
    let (index, id) = cursor.split_once('-')?;
    Some((index.parse().ok()?, id.to_string()))
}

fn field<'a>(map: &'a HashMap<String, Value>, name: &str) -> Option<&'a [u8]> {
    match map.get(name) {
        Some(Value::BulkString(bytes)) => Some(bytes),
        _ => None,
    }
}

fn text(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    field(map, name).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn number<T: std::str::FromStr>(map: &HashMap<String, Value>, name: &str) -> Option<T> {
    text(map, name)?.parse().ok()
}

/// Lists up to `limit` dead letters after `after`.
pub async fn list(
    conn: &mut ConnectionManager,
    keys: &[String],
    limit: usize,
    after: Option<&str>,
) -> redis::RedisResult<Page> {
    let (mut index, mut from) = match after.and_then(parse_cursor) {
        Some((index, id)) => (index, format!("({id}")),
        None => (0, "-".to_string()),
    };
    let mut entries = Vec::new();
    let mut bytes = 0;
    let mut full = false;
    while !full && index < keys.len() && entries.len() < limit {
        let want = limit - entries.len();
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys[index])
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(want)
            .query_async(conn)
            .await?;
        let exhausted = range.ids.len() < want;
        if let Some(last) = range.ids.last() {
            from = format!("({}", last.id);
        }
        for entry in range.ids {
            if let Some(letter) = to_dead_letter(index, entry) {
                // A page holds at least one entry, and stops before passing the byte cap.
                let size = letter.event.get().len();
                if !entries.is_empty() && bytes + size > MAX_PAGE_BYTES {
                    full = true;
                    break;
                }
                bytes += size;
                entries.push(letter);
            }
        }
        if exhausted && !full {
            index += 1;
            from = "-".to_string();
        }
    }
    let next = entries
        .last()
        .filter(|_| full || entries.len() >= limit)
        .map(|e| e.id.clone());
    Ok(Page { entries, next })
}

/// Reads one DLQ entry; `None` when it cannot be decoded (it is skipped).
fn to_dead_letter(index: usize, entry: redis::streams::StreamId) -> Option<DeadLetter> {
    let envelope = field(&entry.map, ENTRY_FIELD).and_then(|b| Envelope::decode(b).ok())?;
    let event = String::from_utf8(envelope.payload)
        .ok()
        .and_then(|s| serde_json::value::RawValue::from_string(s).ok())?;
    Some(DeadLetter {
        id: format!("{index}-{}", entry.id),
        partition: text(&entry.map, "partition").unwrap_or_default(),
        source_id: text(&entry.map, "source_id").unwrap_or_default(),
        event_id: envelope.event_id,
        topic: envelope.topic,
        reason: text(&entry.map, "reason").unwrap_or_default(),
        attempts: number(&entry.map, "attempts").unwrap_or(0),
        last_status: number(&entry.map, "last_status"),
        last_error: text(&entry.map, "last_error"),
        first_attempt_ms: number(&entry.map, "first_attempt_ms").unwrap_or(0),
        last_attempt_ms: number(&entry.map, "last_attempt_ms").unwrap_or(0),
        event,
    })
}

/// Up to `count` entries of DLQ `key` from `from` (`-`, or `(id` for after `id`): each
/// entry's id and its stored envelope (entries without one are skipped).
pub async fn page(
    conn: &mut ConnectionManager,
    key: &str,
    from: &str,
    count: usize,
) -> redis::RedisResult<Vec<(String, Bytes)>> {
    let range: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg(from)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(range
        .ids
        .into_iter()
        .filter_map(|entry| {
            let raw = Bytes::copy_from_slice(field(&entry.map, ENTRY_FIELD)?);
            Some((entry.id, raw))
        })
        .collect())
}

/// Removes one dead letter.
pub async fn delete(conn: &mut ConnectionManager, key: &str, id: &str) -> redis::RedisResult<()> {
    let _: i64 = redis::cmd("XDEL")
        .arg(key)
        .arg(id)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Deletes every dead letter of the subscription; returns how many there were.
pub async fn purge(conn: &mut ConnectionManager, keys: &[String]) -> redis::RedisResult<u64> {
    let mut purged = 0;
    for key in keys {
        let (len, _): (u64, i64) = redis::pipe()
            .cmd("XLEN")
            .arg(key)
            .cmd("DEL")
            .arg(key)
            .query_async(conn)
            .await?;
        purged += len;
    }
    Ok(purged)
}

/// Every DLQ stream under `prefix` that Redis holds: of the subscriptions that exist now,
/// and of those deleted or left by an older version (found by `SCAN`, not by name).
pub async fn scan_all(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let pattern = format!("{}:{{*}}:dlq:*", super::glob_escape(prefix));
    super::scan_keys(conn, &pattern, Some("stream")).await
}

/// Deletes every DLQ stream of `subscription`: beside each of `partitions`, and any other
/// under `prefix` that Redis holds (a partition no longer configured). Returns how many
/// dead letters there were.
pub async fn discard(
    conn: &mut ConnectionManager,
    prefix: &str,
    partitions: &[Arc<str>],
    subscription: &str,
) -> redis::RedisResult<u64> {
    let pattern = format!(
        "{}:{{*}}:dlq:{}",
        super::glob_escape(prefix),
        super::glob_escape(subscription)
    );
    let mut keys = super::scan_keys(conn, &pattern, Some("stream")).await?;
    keys.extend(self::keys(partitions, subscription));
    keys.sort();
    keys.dedup();
    purge(conn, &keys).await
}
