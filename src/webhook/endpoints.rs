//! A subscription's endpoints: round robin over the healthy ones, a circuit breaker each.
//! An endpoint is ejected only while another one takes every request; otherwise its
//! breaker degrades to a paced allowance (see [`super::breaker`]), so that a subscription
//! always has an endpoint that takes requests, at least a few a second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hyper::Uri;

use super::breaker::Breaker;
use crate::model::subscription::BreakerSpec;
use crate::model::sync::lock;

/// A subscription's endpoints and their breakers.
#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<Uri>,
    breakers: Mutex<Vec<Breaker>>,
    next: AtomicUsize,
}

impl Endpoints {
    /// Endpoints from validated URLs, each with a breaker as `spec` says.
    pub fn new(urls: &[String], spec: &BreakerSpec) -> Self {
        let urls: Vec<Uri> = urls.iter().filter_map(|u| u.parse().ok()).collect();
        let breakers = urls.iter().map(|_| Breaker::new(spec)).collect();
        Self {
            urls,
            breakers: Mutex::new(breakers),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint whose breaker lets a request through, round robin; when none
    /// does, the earliest time one may (a degraded endpoint's next interval, or the end of a
    /// cooldown).
    pub fn pick(&self) -> Result<(usize, &Uri), Option<Instant>> {
        let now = Instant::now();
        let mut breakers = lock(&self.breakers);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.urls.len() {
            let index = (start + offset) % self.urls.len();
            if breakers[index].try_acquire(now) {
                return Ok((index, &self.urls[index]));
            }
        }
        Err(breakers.iter().filter_map(|b| b.retry_at(now)).min())
    }

    /// Whether each endpoint's breaker is open (or probing, or degraded), in order.
    pub fn open(&self) -> Vec<bool> {
        lock(&self.breakers).iter().map(Breaker::is_open).collect()
    }

    /// The URL of endpoint `index`.
    pub fn url(&self, index: usize) -> Option<&Uri> {
        self.urls.get(index)
    }

    /// Records how an endpoint answered. Its breaker may open only while another
    /// endpoint's is closed; otherwise it degrades.
    pub fn report(&self, index: usize, healthy: bool) {
        let now = Instant::now();
        let mut breakers = lock(&self.breakers);
        let others_closed = breakers
            .iter()
            .enumerate()
            .any(|(i, b)| i != index && b.is_closed());
        if let Some(breaker) = breakers.get_mut(index) {
            if healthy {
                breaker.success(now);
            } else {
                breaker.failure(now, others_closed);
            }
        }
    }
}
