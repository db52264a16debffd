//! Stored subscriptions: every spec as JSON in one Redis hash, with a version counter that
//! changes on every write, so that every instance can tell when to read them again.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;

/// Creates a spec unless one of that name exists: 1 created, 0 same body, -1 different.
const CREATE: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('INCR', KEYS[2])
  return 1
end
if current == ARGV[2] then return 0 end
return -1
";

/// What a create did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new subscription.
    New,
    /// The same subscription already existed.
    Unchanged,
    /// A different subscription of that name exists.
    Conflict,
}

/// The hash of stored specs and its version counter.
#[derive(Clone)]
pub struct SubscriptionStore {
    conn: ConnectionManager,
    hash_key: String,
    version_key: String,
    secrets_key: String,
    rewinds_key: String,
}

impl SubscriptionStore {
    /// The store under `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            hash_key: format!("{prefix}:subscriptions"),
            version_key: format!("{prefix}:subscriptions:version"),
            secrets_key: format!("{prefix}:subscriptions:secrets"),
            rewinds_key: format!("{prefix}:subscriptions:rewinds"),
        }
    }

    /// Stores `json` under `name` unless a subscription of that name exists.
    pub async fn create(&self, name: &str, json: &str) -> redis::RedisResult<Created> {
        let mut conn = self.conn.clone();
        let result: i64 = redis::cmd("EVAL")
            .arg(CREATE)
            .arg(2)
            .arg(&self.hash_key)
            .arg(&self.version_key)
            .arg(name)
            .arg(json)
            .query_async(&mut conn)
            .await?;
        Ok(match result {
            1 => Created::New,
            0 => Created::Unchanged,
            _ => Created::Conflict,
        })
    }

    /// Stores `json` under `name`, replacing any; returns whether one existed.
    pub async fn put(&self, name: &str, json: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let (added, _): (i64, i64) = redis::pipe()
            .atomic()
            .hset(&self.hash_key, name, json)
            .incr(&self.version_key, 1)
            .query_async(&mut conn)
            .await?;
        Ok(added == 0)
    }

    /// Counts a rewind of `name` (so that every instance restarts its delivery) and moves
    /// the version; returns the new count.
    pub async fn bump_rewinds(&self, name: &str) -> redis::RedisResult<i64> {
        let mut conn = self.conn.clone();
        let (count, _): (i64, i64) = redis::pipe()
            .atomic()
            .hincr(&self.rewinds_key, name, 1)
            .incr(&self.version_key, 1)
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }

    /// How many times each subscription was rewound.
    pub async fn load_rewinds(&self) -> redis::RedisResult<std::collections::HashMap<String, i64>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGETALL")
            .arg(&self.rewinds_key)
            .query_async(&mut conn)
            .await
    }

    /// Removes `name`; returns whether it existed.
    pub async fn delete(&self, name: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let (removed, _, _, _): (i64, i64, i64, i64) = redis::pipe()
            .atomic()
            .hdel(&self.hash_key, name)
            .hdel(&self.secrets_key, name)
            .hdel(&self.rewinds_key, name)
            .incr(&self.version_key, 1)
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// The version counter; `None` when Redis has none (nothing stored, or data lost).
    pub async fn version(&self) -> redis::RedisResult<Option<i64>> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(&self.version_key)
            .query_async(&mut conn)
            .await
    }

    /// Writes `specs` (name, JSON) back in one step, moving the version.
    pub async fn restore(&self, specs: &[(String, String)]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for (name, json) in specs {
            pipe.hset(&self.hash_key, name, json).ignore();
        }
        pipe.incr(&self.version_key, 1).ignore();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Every stored spec, by name.
    pub async fn load(&self) -> redis::RedisResult<BTreeMap<String, String>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGETALL")
            .arg(&self.hash_key)
            .query_async(&mut conn)
            .await
    }

    /// Every stored signing secret (JSON), by subscription name.
    pub async fn load_secrets(&self) -> redis::RedisResult<BTreeMap<String, String>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGETALL")
            .arg(&self.secrets_key)
            .query_async(&mut conn)
            .await
    }

    /// Stores `json` as the secrets of `name` unless it has some; returns whether stored.
    pub async fn create_secrets(&self, name: &str, json: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        redis::cmd("HSETNX")
            .arg(&self.secrets_key)
            .arg(name)
            .arg(json)
            .query_async(&mut conn)
            .await
    }

    /// Replaces the secrets of `name`, moving the version so that every instance signs
    /// with the new ones.
    pub async fn replace_secrets(&self, name: &str, json: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .hset(&self.secrets_key, name, json)
            .ignore()
            .incr(&self.version_key, 1)
            .ignore()
            .query_async(&mut conn)
            .await
    }
}
