//! The start-up check of Redis's persistence: can an acknowledged event be lost on a crash?

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
