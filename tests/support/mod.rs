//! Test support: a private `redis-server` per test, evrouter in-process ([`TestRouter`]) or
//! as the real binary ([`process::RouterProcess`]), both driven through [`RouterApi`]; a
//! recording webhook subscriber, a fake Dapr app, and one way to wait for something
//! ([`eventually`]).
// Every test binary compiles all of support and uses only part of it, re-exports included.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod browser;
pub mod dapr_app;
pub mod dapr_py;
pub mod events;
pub mod process;
pub mod proxy;
pub mod redis_server;
pub mod router;
pub mod secured;
pub mod subscriber;
pub mod wait;

// evrouter's library as the tests see it. Every `evrouter::` path the tests use is named
// here and nowhere else: a change to the crate's module layout is made in this block.
pub use evrouter::auth::hash_token;
pub use evrouter::catalog::partition_of;
pub use evrouter::config::{
    AppProtocol, AuthConfig, AuthMode, Config, DaprAppConfig, DaprPubsubConfig, Durability,
    EventStoreConfig, JwtConfig, KeyRuleConfig, PrincipalConfig, StreamConfig, SubjectConfig,
    WhenFull,
};
pub use evrouter::eventstore::partitions::{existing as partition_days, Day};
pub use evrouter::eventstore::EventStore;
pub use evrouter::health::Health;
pub use evrouter::ingress::listeners::ListenError;
pub use evrouter::model::dead_letter::Failure;
pub use evrouter::model::envelope::{Envelope, PayloadFormat};
pub use evrouter::model::trace::is_valid_traceparent;
pub use evrouter::store::acks::{AckOp, Acker, Barrier};
pub use evrouter::{run as run_router, RunError};

pub use api::{client, fast_retries, RouterApi};
pub use events::{keyed_event, order_event, publish_keyed};
pub use redis_server::{dlq_entries, wait_for_holders, RedisServer};
pub use router::{test_config, TestRouter};
pub use wait::eventually;

use std::net::TcpListener as StdListener;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends test logs to the test harness, which prints them only when a test fails.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVR_LOG")
                .unwrap_or_else(|_| "evrouter=debug,info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Tests that run several evrouter processes take this first, so that they run alone
/// (their lease timings assume a machine that is not starved); other tests of the same
/// binary take [`light`], and run beside each other but never beside a heavy one.
pub async fn heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// See [`heavy`].
pub async fn light() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
