//! The subscription registry: specs kept in Redis (see `store::subscriptions`, with a
//! version counter that changes on every write) so that every instance sees the same
//! subscriptions, and a local copy, compiled, that is refreshed when the version moves.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionManager;

use super::subscription::Subscription;
use crate::model::clock::now_ms;
use crate::model::signing::SigningSecrets;
use crate::model::subscription::SubscriptionSpec;
use crate::model::sync::{read, write};
use crate::store::subscriptions::SubscriptionStore;
pub use crate::store::subscriptions::{Bounds, Created, Full};

/// Subscriptions by name.
type SubscriptionMap = BTreeMap<String, Arc<Subscription>>;

/// The subscriptions, in Redis and locally.
pub struct Registry {
    store: SubscriptionStore,
    local: RwLock<(Option<i64>, SubscriptionMap)>,
}

impl Registry {
    /// A registry under `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            store: SubscriptionStore::new(conn, prefix),
            local: RwLock::new((None, BTreeMap::new())),
        }
    }

    /// The JSON a spec is stored as (every field written, so equal specs compare equal).
    pub fn canonical(spec: &SubscriptionSpec) -> String {
        serde_json::to_string(spec).unwrap_or_default()
    }

    /// Stores a new subscription, within `bounds`, unless one of that name exists.
    pub async fn create(
        &self,
        sub: &Subscription,
        bounds: Bounds<'_>,
    ) -> redis::RedisResult<Created> {
        let created = self
            .store
            .create(sub.name(), &Self::canonical(&sub.spec), bounds)
            .await?;
        self.refresh(true).await?;
        Ok(created)
    }

    /// Stores a subscription, replacing any of that name (a new one within `bounds`).
    pub async fn put(&self, sub: &Subscription, bounds: Bounds<'_>) -> redis::RedisResult<Created> {
        let created = self
            .store
            .put(sub.name(), &Self::canonical(&sub.spec), bounds)
            .await?;
        self.refresh(true).await?;
        Ok(created)
    }

    /// Counts a rewind of `name`, so that every instance restarts its delivery.
    pub async fn bump_rewinds(&self, name: &str) -> redis::RedisResult<i64> {
        let count = self.store.bump_rewinds(name).await?;
        self.refresh(true).await?;
        Ok(count)
    }

    /// Removes a subscription. Returns whether it existed.
    pub async fn delete(&self, name: &str) -> redis::RedisResult<bool> {
        let existed = self.store.delete(name).await?;
        self.refresh(true).await?;
        Ok(existed)
    }

    /// Re-reads the subscriptions when the version moved (or always when `force`).
    /// Returns whether the local copy changed.
    pub async fn refresh(&self, force: bool) -> redis::RedisResult<bool> {
        let version = self.store.version().await?;
        let known = read(&self.local).0;
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
            let specs: Vec<(String, String)> = subs
                .iter()
                .map(|sub| (sub.name().to_string(), Self::canonical(&sub.spec)))
                .collect();
            self.store.restore(&specs).await?;
            return Ok(false);
        }
        let stored = self.store.load().await?;
        let mut secrets = self.store.load_secrets().await?;
        let rewinds = self.store.load_rewinds().await?;
        let mut subs = BTreeMap::new();
        for (name, json) in stored {
            let parsed = serde_json::from_str::<SubscriptionSpec>(&json)
                .map_err(|e| e.to_string())
                .and_then(|spec| Subscription::new(spec).map_err(|v| format!("{v:?}")));
            match parsed {
                Ok(mut sub) => {
                    sub.rewinds = rewinds.get(&name).copied().unwrap_or(0);
                    // A webhook's deliveries are signed; its secrets are made the first
                    // time any instance sees it (Dapr apps use their API token instead).
                    if sub.spec.dapr.is_none() {
                        sub.secrets = match secrets.remove(&name) {
                            Some(json) => serde_json::from_str(&json).ok().map(Arc::new),
                            None => self.make_secrets(&name).await?,
                        };
                    }
                    subs.insert(name, Arc::new(sub));
                }
                Err(err) => {
                    tracing::warn!(subscription = %name, error = %err, "stored subscription ignored")
                }
            }
        }
        let mut local = write(&self.local);
        let changed = local.1.len() != subs.len()
            || local.1.iter().zip(subs.iter()).any(|((a, x), (b, y))| {
                a != b || x.spec != y.spec || x.secrets != y.secrets || x.rewinds != y.rewinds
            });
        *local = (version, subs);
        Ok(changed)
    }

    /// Stores new secrets for `name` unless another instance just did; returns the
    /// stored ones.
    async fn make_secrets(&self, name: &str) -> redis::RedisResult<Option<Arc<SigningSecrets>>> {
        let fresh = SigningSecrets::generate();
        let json = serde_json::to_string(&fresh).unwrap_or_default();
        if self.store.create_secrets(name, &json).await? {
            return Ok(Some(Arc::new(fresh)));
        }
        let stored = self.store.load_secrets().await?;
        Ok(stored
            .get(name)
            .and_then(|json| serde_json::from_str(json).ok())
            .map(Arc::new))
    }

    /// Rotates the signing secrets of `name`: a new current one, the old one still signing
    /// for a day. Returns the new secret; `None` for an unknown subscription or a Dapr app.
    pub async fn rotate_secrets(&self, name: &str) -> redis::RedisResult<Option<String>> {
        let Some(secrets) = self.get(name).and_then(|sub| sub.secrets.clone()) else {
            return Ok(None);
        };
        let rotated = secrets.rotated(now_ms());
        let json = serde_json::to_string(&rotated).unwrap_or_default();
        self.store.replace_secrets(name, &json).await?;
        self.refresh(true).await?;
        Ok(Some(rotated.current))
    }

    /// The bound a new subscription would pass by the local copy (a first look, so that
    /// nothing is made for one refused; Redis decides when it is stored).
    pub fn over(&self, bounds: Bounds<'_>) -> Option<Full> {
        let local = read(&self.local);
        let all = &local.1;
        if bounds.total_max > 0 && all.len() >= bounds.total_max {
            return Some(Full::Total { stored: all.len() });
        }
        if bounds.owner_max > 0 {
            let owned = all
                .values()
                .filter(|s| s.spec.owner.as_deref() == Some(bounds.owner))
                .count();
            if owned >= bounds.owner_max {
                return Some(Full::Owner { owned });
            }
        }
        None
    }

    /// Every subscription known locally.
    pub fn all(&self) -> Vec<Arc<Subscription>> {
        read(&self.local).1.values().cloned().collect()
    }

    /// One subscription.
    pub fn get(&self, name: &str) -> Option<Arc<Subscription>> {
        read(&self.local).1.get(name).cloned()
    }
}
