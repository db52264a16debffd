//! A circuit breaker per endpoint: after `threshold` consecutive failures it opens and the
//! endpoint is skipped; after `cooldown` one probe is let through; a success closes it.

use std::time::{Duration, Instant};

/// State of one endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            failures: 0,
            open_until: None,
            probing: false,
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a request may go to this endpoint now; when the cooldown has passed, lets
    /// exactly one probe through.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(until) if now >= until && !self.probing => {
                self.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// When the endpoint may be tried again, if it is open.
    pub fn retry_at(&self) -> Option<Instant> {
        self.open_until
    }

    /// Records a success: closes the breaker.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
    }

    /// Records a failure: opens (again) after `threshold` in a row, or after a failed probe.
    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.probing || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            self.probing = false;
        }
    }

    /// Whether it is open (not accepting ordinary requests).
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, Duration::from_secs(5));
        for _ in 0..2 {
            assert!(breaker.try_acquire(start));
            breaker.failure(start);
        }
        assert!(!breaker.is_open());
        breaker.failure(start);
        assert!(breaker.is_open());
        assert!(!breaker.try_acquire(start + Duration::from_secs(1)));
        let later = start + Duration::from_secs(5);
        assert!(breaker.try_acquire(later), "one probe after the cooldown");
        assert!(!breaker.try_acquire(later), "only one probe at a time");
        breaker.failure(later);
        assert!(
            !breaker.try_acquire(later + Duration::from_secs(1)),
            "failed probe reopens"
        );
        let much_later = later + Duration::from_secs(5);
        assert!(breaker.try_acquire(much_later));
        breaker.success();
        assert!(!breaker.is_open());
        assert!(breaker.try_acquire(much_later));
    }
}
