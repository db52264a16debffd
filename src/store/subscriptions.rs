//! Stored subscriptions: every spec as JSON in one Redis hash, with a version counter that
//! changes on every write, so that every instance can tell when to read them again.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;

/// Stores a spec (`create`: unless one of that name exists; `put`: replacing one), a new
/// one only within the bounds, counted in the same step so that concurrent creations (on
/// this instance or another) cannot pass them: `{1}` stored a new one, `{2}` replaced
/// one, `{0}` the same one exists, `{-1}` a different one exists, `{-2, n}` all hold `n`
/// (the total bound), `{-3, n}` the owner holds `n` (its bound).
/// ARGV: name, json, `create`|`put`, owner, owner's bound, total bound (0: none).
const STORE: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  if ARGV[3] == 'create' then
    if current == ARGV[2] then return {0} end
    return {-1}
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('INCR', KEYS[2])
  return {2}
end
local total_max = tonumber(ARGV[6])
if total_max > 0 then
  local n = redis.call('HLEN', KEYS[1])
  if n >= total_max then return {-2, n} end
end
local owner_max = tonumber(ARGV[5])
if owner_max > 0 then
  local owned = 0
  for _, spec in ipairs(redis.call('HVALS', KEYS[1])) do
    local ok, decoded = pcall(cjson.decode, spec)
    if ok and type(decoded) == 'table' and decoded['owner'] == ARGV[4] then
      owned = owned + 1
    end
  end
  if owned >= owner_max then return {-3, owned} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return {1}
";

/// What a create or a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new subscription.
    New,
    /// The same subscription already existed (create).
    Unchanged,
    /// A different subscription of that name exists (create).
    Conflict,
    /// One of that name was replaced (put).
    Replaced,
    /// A new one would pass a bound: nothing was stored.
    Full(Full),
}

/// The bound a new subscription would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Its owner holds `owned` subscriptions, its most.
    Owner {
        /// How many it holds.
        owned: usize,
    },
    /// `stored` subscriptions are stored in all, the most.
    Total {
        /// How many are stored.
        stored: usize,
    },
}

/// The bounds a new subscription must fit in (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds<'a> {
    /// Whose subscriptions count towards `owner_max`.
    pub owner: &'a str,
    /// Most subscriptions `owner` may hold.
    pub owner_max: usize,
    /// Most subscriptions in all.
    pub total_max: usize,
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

    /// Stores `json` under `name` unless a subscription of that name exists; a new one
    /// only within `bounds`.
    pub async fn create(
        &self,
        name: &str,
        json: &str,
        bounds: Bounds<'_>,
    ) -> redis::RedisResult<Created> {
        self.store(name, json, "create", bounds).await
    }

    /// Stores `json` under `name`, replacing any; a new one only within `bounds`.
    pub async fn put(
        &self,
        name: &str,
        json: &str,
        bounds: Bounds<'_>,
    ) -> redis::RedisResult<Created> {
        self.store(name, json, "put", bounds).await
    }

    async fn store(
        &self,
        name: &str,
        json: &str,
        mode: &str,
        bounds: Bounds<'_>,
    ) -> redis::RedisResult<Created> {
        let mut conn = self.conn.clone();
        let result: Vec<i64> = redis::cmd("EVAL")
            .arg(STORE)
            .arg(2)
            .arg(&self.hash_key)
            .arg(&self.version_key)
            .arg(name)
            .arg(json)
            .arg(mode)
            .arg(bounds.owner)
            .arg(bounds.owner_max)
            .arg(bounds.total_max)
            .query_async(&mut conn)
            .await?;
        let count = result.get(1).copied().unwrap_or(0).max(0) as usize;
        Ok(match result.first().copied().unwrap_or(-1) {
            1 => Created::New,
            2 => Created::Replaced,
            0 => Created::Unchanged,
            -2 => Created::Full(Full::Total { stored: count }),
            -3 => Created::Full(Full::Owner { owned: count }),
            _ => Created::Conflict,
        })
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
