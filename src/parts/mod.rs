//! The parts of a running evrouter: built, then started, then drained.
//!
//! [`crate::run`] builds first ([`Built`], then the listeners bound by
//! `ingress::listeners`): everything that can fail (schemas, principals, secrets, TLS
//! material, Redis and its checks, the event store, every listener) is done before any
//! task starts, so that a start-up error leaves no lease, task or listener behind. Then
//! each part starts ([`start`], and the API in `lib.rs`) with what it needs and the
//! [`Drain`] signal, and is recorded in [`Parts`]. At shutdown [`Parts::drain`] gives the signal (the parts
//! that serve or deliver begin to wind down at once, together), then stops the parts one
//! by one in reverse start order, all within one budget, and logs any part the budget cut
//! short.

mod build;
mod redis;
pub(crate) mod start;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) use build::{Api, Apps, Built, Core};
pub(crate) use redis::target as redis_target;

/// The drain signal: the deadline of shutdown, once it has begun.
#[derive(Clone)]
pub(crate) struct Drain(watch::Receiver<Option<Instant>>);

impl Drain {
    /// Waits until shutdown begins, and returns its deadline (now, when the parts were
    /// dropped without a drain).
    pub(crate) async fn begun(mut self) -> Instant {
        match self.0.wait_for(Option::is_some).await {
            Ok(deadline) => deadline.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        }
    }

    /// Waits until shutdown begins.
    pub(crate) async fn wait(self) {
        self.begun().await;
    }
}

/// How a started part stops when its turn in the drain comes.
pub(crate) enum Stop {
    /// A task that winds down by itself once the drain signal is given: waited for.
    Task(JoinHandle<()>),
    /// A loop with nothing in flight: aborted.
    Abort(JoinHandle<()>),
    /// Work that stops the part (a flush, a close): done.
    Work(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Stop {
    /// Work that stops a part.
    pub(crate) fn work(work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self::Work(Box::pin(work))
    }
}

/// The parts started so far, in start order.
pub(crate) struct Parts {
    started: Vec<(&'static str, Stop)>,
    signal: watch::Sender<Option<Instant>>,
    budget: Duration,
}

impl Parts {
    /// No part started yet; shutdown may take `budget` (`server.shutdown_budget`).
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            started: Vec::new(),
            signal: watch::channel(None).0,
            budget,
        }
    }

    /// The drain signal, for a part to wind down by itself.
    pub(crate) fn drain_signal(&self) -> Drain {
        Drain(self.signal.subscribe())
    }

    /// Records a part that has started.
    pub(crate) fn started(&mut self, name: &'static str, stop: Stop) {
        self.started.push((name, stop));
    }

    /// Gives the drain signal, then stops every part in reverse start order, each given
    /// until the budget's deadline; a part still running then is logged and left off.
    /// Returns the parts the budget cut short.
    pub(crate) async fn drain(mut self) -> Vec<&'static str> {
        let mut cut = Vec::new();
        let deadline = Instant::now() + self.budget;
        let _ = self.signal.send(Some(deadline));
        while let Some((part, stop)) = self.started.pop() {
            let stopped = match stop {
                Stop::Abort(task) => {
                    task.abort();
                    let _ = task.await;
                    true
                }
                Stop::Task(mut task) => {
                    let ended = tokio::time::timeout_at(deadline, &mut task).await;
                    if ended.is_err() {
                        task.abort();
                    }
                    ended.is_ok()
                }
                Stop::Work(work) => tokio::time::timeout_at(deadline, work).await.is_ok(),
            };
            if !stopped {
                tracing::warn!(part, budget = ?self.budget, "the shutdown budget ran out before this part stopped");
                cut.push(part);
            }
        }
        cut
    }
}

impl Drop for Parts {
    /// Parts dropped without a drain (the future of `run` dropped): their tasks end.
    fn drop(&mut self) {
        for (_, stop) in &self.started {
            if let Stop::Task(task) | Stop::Abort(task) = stop {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sync::lock;
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn parts_stop_in_reverse_start_order_and_the_budget_cuts_a_stuck_one() {
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let mut parts = Parts::new(Duration::from_secs(5));
        for name in ["first", "second"] {
            let stopped = stopped.clone();
            parts.started(name, Stop::work(async move { lock(&stopped).push(name) }));
        }
        // Winds down by itself once the drain begins, before its turn comes.
        let drain = parts.drain_signal();
        let winding = stopped.clone();
        let task = tokio::spawn(async move {
            drain.wait().await;
            lock(&winding).push("third");
        });
        parts.started("third", Stop::Task(task));
        parts.started("stuck", Stop::Task(tokio::spawn(std::future::pending())));
        let began = Instant::now();
        let cut = parts.drain().await;
        assert_eq!(cut, ["stuck"]);
        assert_eq!(*lock(&stopped), ["third", "second", "first"]);
        assert_eq!(began.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_parts_end_their_tasks() {
        let mut parts = Parts::new(Duration::from_secs(5));
        let task = tokio::spawn(std::future::pending::<()>());
        let handle = task.abort_handle();
        parts.started("loop", Stop::Abort(task));
        drop(parts);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(handle.is_finished());
    }
}
