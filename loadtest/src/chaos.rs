//! `--chaos`: while the load runs, every few seconds one fault at random: an instance
//! stopped with SIGTERM (it must exit 0) or killed with SIGKILL and started again, an
//! instance paused (SIGSTOP) past its lease and resumed, or Redis (durable) killed and
//! started again. What was acknowledged must still arrive, in order per key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::spawn::System;

/// What the chaos did, and whether every SIGTERM ended in exit 0.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ChaosLog {
    /// One line per fault.
    pub faults: Vec<String>,
    /// SIGTERMs that did not end in exit 0 within 30 s.
    pub unclean_exits: u64,
}

/// Injects faults until `end`.
pub async fn run(shared: Arc<Mutex<System>>, start: Instant, end: Instant) -> ChaosLog {
    let mut log = ChaosLog::default();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    tokio::time::sleep_until(start.into()).await;
    loop {
        let pause = Duration::from_millis(rng.u64(4_000..10_000));
        if Instant::now() + pause >= end {
            break;
        }
        tokio::time::sleep(pause).await;
        let at = start.elapsed().as_secs();
        let mut system = shared.lock().await;
        let i = rng.usize(0..system.instances());
        let line = match rng.u8(0..4) {
            0 => {
                system.signal(i, "TERM");
                let status = system.reap(i, Duration::from_secs(30)).await;
                let clean = status.is_some_and(|s| s.success());
                if !clean {
                    log.unclean_exits += 1;
                }
                let restarted = system.restart(i).await.is_ok();
                format!("{at}s: instance {i} SIGTERM (exit {status:?}), restarted: {restarted}")
            }
            1 => {
                system.signal(i, "KILL");
                let _ = system.reap(i, Duration::from_secs(5)).await;
                let restarted = system.restart(i).await.is_ok();
                format!("{at}s: instance {i} SIGKILL, restarted: {restarted}")
            }
            2 => {
                let paused = Duration::from_millis(rng.u64(2_000..6_000));
                system.signal(i, "STOP");
                drop(system);
                tokio::time::sleep(paused).await;
                shared.lock().await.signal(i, "CONT");
                format!("{at}s: instance {i} paused for {paused:?}")
            }
            _ => {
                let restarted = system.restart_redis().is_ok();
                format!("{at}s: Redis killed and restarted: {restarted}")
            }
        };
        eprintln!("chaos: {line}");
        log.faults.push(line);
    }
    log
}
