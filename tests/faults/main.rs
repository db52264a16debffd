//! The fault suite: real evrouter processes and real `redis-server`s under the failures a
//! shared event router meets: instances joining, leaving, killed, paused or with a clock
//! ahead; Redis killed, restarted, full, or cut off by the network; fencing of a former
//! owner's late writes; poison floods; slow clients; many subscriptions. Each module says
//! what it promises; docs/delivery.md lists the guarantees with the test that shows each.

#[path = "../support/mod.rs"]
mod support;

mod clock;
mod connections;
mod failover;
mod fencing;
mod fsync;
mod handoff;
mod network;
mod panics;
mod poison;
mod redis;
mod redis_full;
mod shutdown;
mod slowloris;
