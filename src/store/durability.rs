//! The start-up checks of Redis's settings: can an acknowledged event be lost on a crash
//! (persistence), and can Redis drop keys on its own when full (its eviction policy)?

use redis::aio::ConnectionManager;

/// What Redis's persistence settings mean for acknowledged events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// AOF with `appendfsync always`: an acknowledged write survives a crash.
    Durable,
    /// A crash can lose acknowledged events; the reason says why.
    Lossy(String),
    /// The settings could not be read (CONFIG may be disabled).
    Unknown(String),
}

/// Reads `appendonly` and `appendfsync` from Redis.
pub async fn check(conn: &mut ConnectionManager) -> Persistence {
    let result: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let pairs = match result {
        Ok(pairs) => pairs,
        Err(err) => return Persistence::Unknown(err.to_string()),
    };
    let get = |name: &str| {
        pairs
            .chunks(2)
            .find(|kv| kv.first().map(String::as_str) == Some(name))
            .and_then(|kv| kv.get(1).cloned())
    };
    classify(get("appendonly").as_deref(), get("appendfsync").as_deref())
}

/// Redis's memory settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// `maxmemory` in bytes; 0 when Redis has no limit.
    pub maxmemory: u64,
    /// `maxmemory-policy`.
    pub policy: String,
}

impl Memory {
    /// Why this policy can lose data evrouter keeps, if it can: any policy but
    /// `noeviction` may evict leases, dedup keys, sequence state or whole streams.
    pub fn eviction_risk(&self) -> Option<String> {
        (self.policy != "noeviction").then(|| {
            format!(
                "maxmemory-policy is `{}`: when full, Redis may evict leases, dedup keys, sequence state or whole streams (set it to `noeviction`)",
                self.policy
            )
        })
    }
}

/// Reads `maxmemory` and `maxmemory-policy`; `None` when CONFIG is not allowed.
pub async fn memory(conn: &mut ConnectionManager) -> Option<Memory> {
    let pairs: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(conn)
        .await
        .ok()?;
    let get = |name: &str| {
        pairs
            .chunks(2)
            .find(|kv| kv.first().map(String::as_str) == Some(name))
            .and_then(|kv| kv.get(1).cloned())
    };
    Some(Memory {
        maxmemory: get("maxmemory")?.parse().ok()?,
        policy: get("maxmemory-policy")?,
    })
}

/// Classifies the two settings.
pub fn classify(appendonly: Option<&str>, appendfsync: Option<&str>) -> Persistence {
    match (appendonly, appendfsync) {
        (Some("yes"), Some("always")) => Persistence::Durable,
        (Some("yes"), Some(other)) => Persistence::Lossy(format!(
            "appendfsync is `{other}`: up to a second of acknowledged events can be lost on a crash"
        )),
        (Some("no"), _) => Persistence::Lossy(
            "appendonly is `no`: acknowledged events are lost when Redis crashes".into(),
        ),
        _ => Persistence::Unknown("CONFIG GET did not return appendonly/appendfsync".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_settings() {
        assert_eq!(classify(Some("yes"), Some("always")), Persistence::Durable);
        assert!(matches!(
            classify(Some("yes"), Some("everysec")),
            Persistence::Lossy(_)
        ));
        assert!(matches!(
            classify(Some("no"), Some("always")),
            Persistence::Lossy(_)
        ));
        assert!(matches!(classify(None, None), Persistence::Unknown(_)));
    }
}
