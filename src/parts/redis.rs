//! Redis as the config names it, and the checks made of it before anything starts: that
//! acknowledged events survive a crash (`redis.durability`) and that Redis does not evict
//! evrouter's keys when it is full.

use crate::config::{Config, Durability};
use crate::store::durability::{self, Persistence};
use crate::store::RedisTarget;
use crate::{credentials, RunError};

/// Redis as the config names it (password and TLS included).
pub(crate) fn target(config: &Config) -> Result<RedisTarget, RunError> {
    let password = credentials::redis_password(config)?;
    let tls = credentials::redis_tls(config)?;
    Ok(RedisTarget::new(
        &config.redis.url,
        password.as_deref(),
        Some(&tls),
        config.redis.response_timeout.get(),
        config.redis.connect_timeout.get(),
    )?)
}

/// Refuses (strict) or warns about (warn) a Redis that can lose acknowledged events or
/// evict evrouter's keys.
pub(crate) async fn check(
    control: &mut redis::aio::ConnectionManager,
    policy: Durability,
) -> Result<(), RunError> {
    check_durability(control, policy).await?;
    check_memory(control, policy).await
}

/// Refuses (strict) or warns about (warn) an eviction policy that can drop evrouter's keys;
/// warns when Redis has no memory limit (it then grows until the machine runs out).
async fn check_memory(
    control: &mut redis::aio::ConnectionManager,
    policy: Durability,
) -> Result<(), RunError> {
    if policy == Durability::Off {
        return Ok(());
    }
    let Some(memory) = durability::memory(control).await else {
        tracing::warn!("could not read Redis's maxmemory settings (CONFIG not allowed?)");
        return Ok(());
    };
    if let Some(risk) = memory.eviction_risk() {
        if policy == Durability::Strict {
            return Err(RunError::Evicting(risk));
        }
        tracing::warn!("{risk}");
    }
    if memory.maxmemory == 0 {
        tracing::warn!("Redis has no maxmemory: the streams are bounded at retention.memory_share of the memory of Redis's machine instead, but Redis's other keys are not; set maxmemory (with maxmemory-policy noeviction) so that evrouter answers 507 when it is full");
    }
    Ok(())
}

async fn check_durability(
    control: &mut redis::aio::ConnectionManager,
    policy: Durability,
) -> Result<(), RunError> {
    if policy == Durability::Off {
        return Ok(());
    }
    let persistence = durability::check(control).await;
    match (persistence, policy) {
        (Persistence::Durable, _) => {
            tracing::info!("redis persistence: appendonly with appendfsync always");
            Ok(())
        }
        (Persistence::Lossy(why) | Persistence::Unknown(why), Durability::Strict) => {
            Err(RunError::NotDurable(why))
        }
        (Persistence::Lossy(why), _) => {
            tracing::warn!("acknowledged events can be lost if Redis crashes: {why}");
            Ok(())
        }
        (Persistence::Unknown(why), _) => {
            tracing::warn!("could not verify Redis persistence: {why}");
            Ok(())
        }
    }
}
