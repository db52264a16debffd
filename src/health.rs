//! Live parts watched: every long-running loop (writers, ackers, readers, the control task,
//! the trimmer) runs each round of its work through its [`Part`]. A round that panics is
//! caught and logged, the part is marked down (and `/readyz` names it) and waits a backoff
//! that doubles up to ten seconds; the loop then goes on with its state intact, and the
//! part is up again after its next round completes. Marking a part costs an atomic load per
//! round while it is healthy. Every panic is also counted by part name for the instance's
//! whole life: `run` reports them when it stops, so a caught panic is never silent.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::FutureExt;

use crate::model::sync::lock;

/// First wait after a panic; it doubles with each panic in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait after a panic.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The parts of this instance.
#[derive(Debug, Default)]
pub struct Health {
    parts: Mutex<Vec<Weak<Part>>>,
    /// Panics caught since start, by part name (parts come and go; this stays).
    panicked: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Health {
    /// A new part named `name`, watched until it is dropped.
    pub fn part(&self, name: impl Into<String>) -> Arc<Part> {
        let part = Arc::new(Part {
            name: name.into(),
            down: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            panics_in_a_row: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            panicked: self.panicked.clone(),
        });
        let mut parts = lock(&self.parts);
        parts.retain(|p| p.strong_count() > 0);
        parts.push(Arc::downgrade(&part));
        part
    }

    /// Records a panic that ended a task outside a watched round (found when it is joined).
    pub fn record_panic(&self, part: &str, message: &str) {
        tracing::error!(part, panic = message, "task ended by a panic");
        *lock(&self.panicked).entry(part.to_string()).or_default() += 1;
    }

    /// Every panic caught since start, by part name.
    pub fn panics(&self) -> BTreeMap<String, u64> {
        lock(&self.panicked).clone()
    }

    /// The parts down now, with why, by name.
    pub fn down(&self) -> Vec<(String, String)> {
        let mut down: Vec<(String, String)> = lock(&self.parts)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| p.down.load(Ordering::Relaxed))
            .map(|p| (p.name.clone(), lock(&p.why).clone()))
            .collect();
        down.sort();
        down
    }
}

/// One watched loop.
#[derive(Debug)]
pub struct Part {
    name: String,
    down: AtomicBool,
    why: Mutex<String>,
    panics_in_a_row: AtomicU64,
    panics: AtomicU64,
    panicked: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Part {
    /// Runs one round of the part's work. A panic is caught: the part is marked down, the
    /// panic logged, and after a backoff `None` is returned (the caller goes on with its
    /// next round). A round that completes marks the part up.
    pub async fn round<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        match AssertUnwindSafe(work).catch_unwind().await {
            Ok(value) => {
                if self.down.load(Ordering::Relaxed) {
                    self.down.store(false, Ordering::Relaxed);
                    self.panics_in_a_row.store(0, Ordering::Relaxed);
                    tracing::info!(part = %self.name, "part running again");
                }
                Some(value)
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                let in_a_row = self.panics_in_a_row.fetch_add(1, Ordering::Relaxed);
                self.panics.fetch_add(1, Ordering::Relaxed);
                *lock(&self.panicked).entry(self.name.clone()).or_default() += 1;
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << in_a_row.min(10) as u32)
                    .min(MAX_BACKOFF);
                tracing::error!(part = %self.name, panic = %message, ?backoff, "part panicked; restarting it after a backoff");
                *lock(&self.why) = format!("panicked: {message}");
                self.down.store(true, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                None
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Panics caught since it started.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_round_marks_the_part_down_until_a_round_completes() {
        let health = Health::default();
        let part = health.part("writer-0");
        assert_eq!(part.round(async { 7 }).await, Some(7));
        assert!(health.down().is_empty());
        let caught = part
            .round(async {
                panic!("boom");
            })
            .await;
        assert_eq!(caught, None::<()>);
        assert_eq!(
            health.down(),
            vec![("writer-0".to_string(), "panicked: boom".to_string())]
        );
        assert_eq!(part.panics(), 1);
        assert_eq!(part.round(async { 1 }).await, Some(1));
        assert!(health.down().is_empty(), "up again after a round completes");
        drop(part);
        let _other = health.part("acker:x");
        assert!(health.down().is_empty());
        health.record_panic("shard:x:0", "gone");
        assert_eq!(
            health.panics().into_iter().collect::<Vec<_>>(),
            vec![("shard:x:0".to_string(), 1), ("writer-0".to_string(), 1)],
            "panics outlive their parts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panics_in_a_row_wait_longer_each_time() {
        let health = Health::default();
        let part = health.part("reader");
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            part.round(async { panic!("again") }).await.unwrap_or(());
        }
        // 100 ms, 200 ms, 400 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }
}
