//! The subscription registry: specs kept in one Redis hash (with a version counter that
//! changes on every write) so that every instance sees the same subscriptions, and a
//! local copy that is refreshed when the version moves.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionManager;

use super::subscription::Subscription;
use crate::model::subscription::SubscriptionSpec;

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

/// Subscriptions by name.
type SubscriptionMap = BTreeMap<String, Arc<Subscription>>;

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

/// The subscriptions, in Redis and locally.
pub struct Registry {
    conn: ConnectionManager,
    hash_key: String,
    version_key: String,
    local: RwLock<(Option<i64>, SubscriptionMap)>,
}

impl Registry {
    /// A registry under `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            hash_key: format!("{prefix}:subscriptions"),
            version_key: format!("{prefix}:subscriptions:version"),
            local: RwLock::new((None, BTreeMap::new())),
        }
    }

    /// The JSON a spec is stored as (every field written, so equal specs compare equal).
    pub fn canonical(spec: &SubscriptionSpec) -> String {
        serde_json::to_string(spec).unwrap_or_default()
    }

    /// Stores a new subscription unless one of that name exists.
    pub async fn create(&self, sub: &Subscription) -> redis::RedisResult<Created> {
        let mut conn = self.conn.clone();
        let result: i64 = redis::cmd("EVAL")
            .arg(CREATE)
            .arg(2)
            .arg(&self.hash_key)
            .arg(&self.version_key)
            .arg(sub.name())
            .arg(Self::canonical(&sub.spec))
            .query_async(&mut conn)
            .await?;
        self.refresh(true).await?;
        Ok(match result {
            1 => Created::New,
            0 => Created::Unchanged,
            _ => Created::Conflict,
        })
    }

    /// Stores a subscription, replacing any of that name. Returns whether it existed.
    pub async fn put(&self, sub: &Subscription) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let (added, _): (i64, i64) = redis::pipe()
            .atomic()
            .hset(&self.hash_key, sub.name(), Self::canonical(&sub.spec))
            .incr(&self.version_key, 1)
            .query_async(&mut conn)
            .await?;
        self.refresh(true).await?;
        Ok(added == 0)
    }

    /// Removes a subscription. Returns whether it existed.
    pub async fn delete(&self, name: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let (removed, _): (i64, i64) = redis::pipe()
            .atomic()
            .hdel(&self.hash_key, name)
            .incr(&self.version_key, 1)
            .query_async(&mut conn)
            .await?;
        self.refresh(true).await?;
        Ok(removed == 1)
    }

    /// Re-reads the subscriptions when the version moved (or always when `force`).
    /// Returns whether the local copy changed.
    pub async fn refresh(&self, force: bool) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let version: Option<i64> = redis::cmd("GET")
            .arg(&self.version_key)
            .query_async(&mut conn)
            .await?;
        let known = self.local.read().map(|l| l.0).unwrap_or(None);
        if !force && known.is_some() && known == version {
            return Ok(false);
        }
        if version.is_none() && known.is_some() {
            // The version counter only disappears when Redis lost its data (a restart
            // without persistence): store what this instance knows again.
            let subs = self.all();
            tracing::warn!(
                count = subs.len(),
                "subscriptions missing from Redis; storing them again"
            );
            let mut pipe = redis::pipe();
            for sub in &subs {
                pipe.hset(&self.hash_key, sub.name(), Self::canonical(&sub.spec))
                    .ignore();
            }
            pipe.incr(&self.version_key, 1).ignore();
            pipe.query_async::<()>(&mut conn).await?;
            return Ok(false);
        }
        let stored: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.hash_key)
            .query_async(&mut conn)
            .await?;
        let mut subs = BTreeMap::new();
        for (name, json) in stored {
            let parsed = serde_json::from_str::<SubscriptionSpec>(&json)
                .map_err(|e| e.to_string())
                .and_then(|spec| Subscription::new(spec).map_err(|v| format!("{v:?}")));
            match parsed {
                Ok(sub) => {
                    subs.insert(name, Arc::new(sub));
                }
                Err(err) => {
                    tracing::warn!(subscription = %name, error = %err, "stored subscription ignored")
                }
            }
        }
        let mut local = crate::model::sync::write(&self.local);
        let changed = local.1.len() != subs.len()
            || local
                .1
                .iter()
                .zip(subs.iter())
                .any(|((a, x), (b, y))| a != b || x.spec != y.spec);
        *local = (version, subs);
        Ok(changed)
    }

    /// Every subscription known locally.
    pub fn all(&self) -> Vec<Arc<Subscription>> {
        self.local
            .read()
            .map(|l| l.1.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One subscription.
    pub fn get(&self, name: &str) -> Option<Arc<Subscription>> {
        self.local.read().ok()?.1.get(name).cloned()
    }
}
