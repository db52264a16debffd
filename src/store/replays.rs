//! Replay jobs' state, kept in Redis so that any instance can report a job's progress,
//! cancel it, or resume it from where it stopped: one key a job, expiring a week after
//! its last update.

use redis::aio::ConnectionManager;

/// How long a job's state is kept after its last update.
pub const KEPT_SECS: u64 = 7 * 24 * 3600;

fn key(prefix: &str, id: &str) -> String {
    format!("{prefix}:replay:{id}")
}

/// Writes a job's state (JSON).
pub async fn save(
    conn: &mut ConnectionManager,
    prefix: &str,
    id: &str,
    json: &str,
) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(key(prefix, id))
        .arg(json)
        .arg("EX")
        .arg(KEPT_SECS)
        .query_async(conn)
        .await
}

/// A job's state (JSON), if it is known.
pub async fn load(
    conn: &mut ConnectionManager,
    prefix: &str,
    id: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET")
        .arg(key(prefix, id))
        .query_async(conn)
        .await
}

/// Asks a job to stop: a flag its runner reads between pages.
pub async fn request_cancel(
    conn: &mut ConnectionManager,
    prefix: &str,
    id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(format!("{}:cancel", key(prefix, id)))
        .arg(1)
        .arg("EX")
        .arg(KEPT_SECS)
        .query_async(conn)
        .await
}

/// Whether a job was asked to stop.
pub async fn cancel_requested(
    conn: &mut ConnectionManager,
    prefix: &str,
    id: &str,
) -> redis::RedisResult<bool> {
    redis::cmd("EXISTS")
        .arg(format!("{}:cancel", key(prefix, id)))
        .query_async(conn)
        .await
}

/// Clears a stop request (before a job is resumed).
pub async fn clear_cancel(
    conn: &mut ConnectionManager,
    prefix: &str,
    id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("DEL")
        .arg(format!("{}:cancel", key(prefix, id)))
        .query_async(conn)
        .await
}
