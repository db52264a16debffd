//! A circuit breaker per endpoint, on the failure rate of its last answers (as
//! resilience4j's count-based window and Envoy's outlier detection do): it opens when the
//! share of unhealthy answers reaches the threshold after enough calls; after the cooldown
//! several probes go through at once, and as many successes close it. Whether it may open
//! at all is decided by the caller: a partial failure must never eject every endpoint of a
//! subscription.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::subscription::BreakerSpec;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// State of one endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    /// The last answers, `true` for unhealthy.
    window: VecDeque<bool>,
    failures: u32,
    state: State,
    rate: f64,
    size: usize,
    min_calls: usize,
    cooldown: Duration,
    probes: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(spec: &BreakerSpec) -> Self {
        let size = spec.window.max(1) as usize;
        Self {
            window: VecDeque::with_capacity(size),
            failures: 0,
            state: State::Closed,
            rate: spec.failure_rate,
            size,
            min_calls: (spec.min_calls as usize).clamp(1, size),
            cooldown: Duration::from_millis(spec.cooldown_ms),
            probes: spec.probes.max(1),
        }
    }

    /// Whether a request may go to this endpoint now; after the cooldown, up to `probes`
    /// at once.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen {
                in_flight,
                successes,
            } if in_flight < self.probes => {
                self.state = State::HalfOpen {
                    in_flight: in_flight + 1,
                    successes,
                };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// When the endpoint may be probed, if it is open.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Whether it takes ordinary requests.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether it is open or probing.
    pub fn is_open(&self) -> bool {
        !self.is_closed()
    }

    /// Records a success.
    pub fn success(&mut self) {
        match self.state {
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                if successes + 1 >= self.probes {
                    self.state = State::Closed;
                    self.window.clear();
                    self.failures = 0;
                } else {
                    self.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes: successes + 1,
                    };
                }
            }
            _ => self.record(false),
        }
    }

    /// Records a failure; `may_open`: whether opening would leave the subscription another
    /// endpoint. Without one it opens only when every answer in the window failed.
    pub fn failure(&mut self, now: Instant, may_open: bool) {
        match self.state {
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                if may_open || successes == 0 {
                    self.state = State::Open {
                        until: now + self.cooldown,
                    };
                } else {
                    self.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes,
                    };
                }
            }
            State::Open { .. } => {}
            State::Closed => {
                self.record(true);
                let calls = self.window.len();
                if calls < self.min_calls {
                    return;
                }
                let rate = f64::from(self.failures) / calls as f64;
                let total = self.failures as usize == calls;
                if rate >= self.rate && (may_open || total) {
                    self.state = State::Open {
                        until: now + self.cooldown,
                    };
                }
            }
        }
    }

    fn record(&mut self, failed: bool) {
        if self.window.len() == self.size && self.window.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.window.push_back(failed);
        if failed {
            self.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BreakerSpec {
        BreakerSpec {
            failure_rate: 0.5,
            window: 10,
            min_calls: 4,
            cooldown_ms: 5000,
            probes: 2,
        }
    }

    #[test]
    fn opens_on_the_failure_rate_probes_several_and_closes_on_as_many_successes() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&spec());
        // Three failures are below the minimum number of calls.
        for _ in 0..3 {
            breaker.failure(start, true);
        }
        assert!(breaker.is_closed());
        breaker.success();
        assert!(breaker.is_closed(), "3 of 4 failed, but only now weighed");
        breaker.failure(start, true);
        assert!(breaker.is_open(), "4 of 5 failed");
        assert!(!breaker.try_acquire(start + Duration::from_secs(1)));
        let later = start + Duration::from_secs(5);
        assert!(breaker.try_acquire(later), "first probe");
        assert!(breaker.try_acquire(later), "second probe");
        assert!(!breaker.try_acquire(later), "only two at once");
        breaker.success();
        assert!(breaker.is_open(), "one success of two is not enough");
        breaker.success();
        assert!(breaker.is_closed());
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&spec());
        for _ in 0..4 {
            breaker.failure(start, true);
        }
        let later = start + Duration::from_secs(5);
        assert!(breaker.try_acquire(later));
        breaker.failure(later, true);
        assert_eq!(breaker.retry_at(), Some(later + Duration::from_secs(5)));
    }

    #[test]
    fn half_failing_endpoints_stay_in_use_when_none_other_is_left() {
        let now = Instant::now();
        let mut breaker = Breaker::new(&spec());
        for _ in 0..20 {
            breaker.failure(now, false);
            breaker.success();
        }
        assert!(
            breaker.is_closed(),
            "a partial failure never ejects the last endpoint"
        );
        let mut dead = Breaker::new(&spec());
        for _ in 0..4 {
            dead.failure(now, false);
        }
        assert!(
            dead.is_open(),
            "an endpoint that fails every call is ejected"
        );
    }
}
