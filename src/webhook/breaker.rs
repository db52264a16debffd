//! A circuit breaker per endpoint, on the failure rate of its last answers (as
//! resilience4j's count-based window and Envoy's outlier detection do): it opens when the
//! share of unhealthy answers reaches the threshold after enough calls; after the cooldown
//! several probes go through at once, and as many successes close it.
//!
//! Whether it may open is decided by the caller: an endpoint may be ejected only while
//! another one of the subscription takes every request. When none does, a breaker that
//! would open degrades instead (as Envoy's panic threshold keeps routing to hosts it would
//! eject, and as TCP's slow start paces a congested path): it admits an allowance of
//! requests per second that starts at `probes`, becomes [`GROWTH`] times the healthy
//! answers of the last second (or of the one before, if that had more: a failed attempt
//! and its successful retry may fall into two), so that it doubles while half of them
//! succeed, and never falls below [`FLOOR`]. A half-failing last endpoint is slowed for a few seconds, never starved;
//! a dead one gets one request a second. Enough healthy answers in its window close it.
//! Every decision takes the time as an argument: the breaker is pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::subscription::BreakerSpec;

/// How long a degraded endpoint's allowance lasts before it is weighed again.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A degraded endpoint's next allowance: this many requests per healthy answer of the
/// last interval.
pub const GROWTH: u32 = 4;
/// The fewest requests a degraded endpoint is let through per interval.
pub const FLOOR: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        in_flight: u32,
        successes: u32,
    },
    /// Would be open, but no other endpoint takes every request: `allowance` requests per
    /// interval, `admitted` of them so far in this one.
    Degraded {
        allowance: u32,
        admitted: u32,
    },
}

/// Healthy answers per interval: this one's so far and the last two whole ones'.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    start: Option<Instant>,
    healthy: u32,
    last: u32,
    before: u32,
}

impl Pace {
    /// Moves to the interval holding `now`; whether a new one began.
    fn roll(&mut self, now: Instant) -> bool {
        let Some(start) = self.start else {
            self.start = Some(now);
            return false;
        };
        if now < start + INTERVAL {
            return false;
        }
        let passed = (now - start).as_nanos() / INTERVAL.as_nanos();
        // Whole intervals without answers in between count as such.
        (self.before, self.last) = match passed {
            1 => (self.last, self.healthy),
            2 => (self.healthy, 0),
            _ => (0, 0),
        };
        self.healthy = 0;
        let whole = u32::try_from(passed).unwrap_or(u32::MAX);
        self.start = Some(start + INTERVAL.saturating_mul(whole));
        true
    }

    /// When the current interval ends.
    fn next(&self, now: Instant) -> Instant {
        self.start.unwrap_or(now) + INTERVAL
    }

    /// The most healthy answers of the last two whole intervals (a failed first attempt
    /// and its successful retry may fall into two).
    fn recent(&self) -> u32 {
        self.last.max(self.before)
    }

    /// The allowance of an interval that follows this one.
    fn allowance(&self) -> u32 {
        self.recent().saturating_mul(GROWTH).max(FLOOR)
    }
}

/// State of one endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    /// The last answers, `true` for unhealthy.
    window: VecDeque<bool>,
    failures: u32,
    state: State,
    pace: Pace,
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
            pace: Pace::default(),
            rate: spec.failure_rate,
            size,
            min_calls: (spec.min_calls as usize).clamp(1, size),
            cooldown: Duration::from_millis(spec.cooldown_ms),
            probes: spec.probes.max(1),
        }
    }

    /// Whether a request may go to this endpoint now: always when closed; after the
    /// cooldown, up to `probes` at once; when degraded, within this interval's allowance.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        self.roll(now);
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
            State::Degraded {
                allowance,
                admitted,
            } if admitted < allowance => {
                self.state = State::Degraded {
                    allowance,
                    admitted: admitted + 1,
                };
                true
            }
            State::Degraded { .. } => false,
        }
    }

    /// When a request may go through again, if none may now: the end of the cooldown, or
    /// of a degraded endpoint's interval.
    pub fn retry_at(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            State::Degraded {
                allowance,
                admitted,
            } if admitted >= allowance => Some(self.pace.next(now)),
            _ => None,
        }
    }

    /// Whether it takes ordinary requests.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether it is open, probing or degraded.
    pub fn is_open(&self) -> bool {
        !self.is_closed()
    }

    /// Whether it admits a paced allowance instead of being open.
    pub fn is_degraded(&self) -> bool {
        matches!(self.state, State::Degraded { .. })
    }

    /// Records a success.
    pub fn success(&mut self, now: Instant) {
        self.roll(now);
        self.pace.healthy = self.pace.healthy.saturating_add(1);
        match self.state {
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                if successes + 1 >= self.probes {
                    self.close();
                } else {
                    self.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes: successes + 1,
                    };
                }
            }
            State::Degraded { .. } => {
                self.record(false);
                if self.window.len() >= self.min_calls && !self.over_rate() {
                    self.close();
                }
            }
            State::Closed => self.record(false),
            State::Open { .. } => {}
        }
    }

    /// Records a failure; `may_open`: whether another endpoint of the subscription takes
    /// every request, so that this one may be ejected. Without one it degrades instead.
    pub fn failure(&mut self, now: Instant, may_open: bool) {
        self.roll(now);
        match self.state {
            State::HalfOpen { .. } => self.trip(now, may_open),
            State::Open { .. } => {}
            State::Degraded { .. } => {
                self.record(true);
                if may_open {
                    self.trip(now, true);
                }
            }
            State::Closed => {
                self.record(true);
                if self.window.len() >= self.min_calls && self.over_rate() {
                    self.trip(now, may_open);
                }
            }
        }
    }

    /// Opens (`may_open`) or degrades, with a fresh window either way.
    fn trip(&mut self, now: Instant, may_open: bool) {
        self.state = if may_open {
            State::Open {
                until: now + self.cooldown,
            }
        } else {
            // From the answers it had just now: `probes` when none succeeded (a burst of
            // failures at start), at once the pace it kept if it flaps around the rate.
            let recent = self.pace.recent().max(self.pace.healthy);
            State::Degraded {
                allowance: recent.saturating_mul(GROWTH).max(self.probes),
                admitted: 0,
            }
        };
        self.clear();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.clear();
    }

    /// A new interval sets a degraded endpoint's allowance from the last one's answers.
    fn roll(&mut self, now: Instant) {
        if self.pace.roll(now) {
            if let State::Degraded { .. } = self.state {
                self.state = State::Degraded {
                    allowance: self.pace.allowance(),
                    admitted: 0,
                };
            }
        }
    }

    fn over_rate(&self) -> bool {
        let calls = self.window.len().max(1);
        f64::from(self.failures) / calls as f64 >= self.rate
    }

    fn clear(&mut self) {
        self.window.clear();
        self.failures = 0;
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

    /// Offers `demand` requests spread over each of `intervals` intervals from `start`,
    /// each answered at once as `healthy` says (given how many were sent before it); the
    /// endpoint is the subscription's last (it may not open). Returns how many went through
    /// in each interval, and the time after the last.
    fn offer(
        breaker: &mut Breaker,
        start: Instant,
        intervals: u32,
        demand: u32,
        mut healthy: impl FnMut(u32) -> bool,
    ) -> (Vec<u32>, Instant) {
        let mut sent = 0;
        let mut admitted = Vec::new();
        for k in 0..intervals {
            let mut this = 0;
            for i in 0..demand {
                let now = start + INTERVAL * k + INTERVAL * i / demand;
                if breaker.try_acquire(now) {
                    this += 1;
                    if healthy(sent) {
                        breaker.success(now);
                    } else {
                        breaker.failure(now, false);
                    }
                    sent += 1;
                }
            }
            admitted.push(this);
        }
        (admitted, start + INTERVAL * intervals)
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
        breaker.success(start);
        assert!(breaker.is_closed(), "3 of 4 failed, but only now weighed");
        breaker.failure(start, true);
        assert!(breaker.is_open(), "4 of 5 failed");
        assert!(
            !breaker.is_degraded(),
            "another endpoint takes the requests"
        );
        assert!(!breaker.try_acquire(start + Duration::from_secs(1)));
        let later = start + Duration::from_secs(5);
        assert!(breaker.try_acquire(later), "first probe");
        assert!(breaker.try_acquire(later), "second probe");
        assert!(!breaker.try_acquire(later), "only two at once");
        breaker.success(later);
        assert!(breaker.is_open(), "one success of two is not enough");
        breaker.success(later);
        assert!(breaker.is_closed());
    }

    #[test]
    fn a_failed_probe_opens_again_while_another_endpoint_takes_requests() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&spec());
        for _ in 0..4 {
            breaker.failure(start, true);
        }
        let later = start + Duration::from_secs(5);
        assert!(breaker.try_acquire(later));
        breaker.failure(later, true);
        assert_eq!(
            breaker.retry_at(later),
            Some(later + Duration::from_secs(5))
        );
        // When the other endpoint is gone meanwhile, a failed probe degrades instead.
        let last = later + Duration::from_secs(5);
        assert!(breaker.try_acquire(last));
        breaker.failure(last, false);
        assert!(breaker.is_degraded());
        assert!(breaker.try_acquire(last), "still takes requests");
    }

    #[test]
    fn the_last_endpoint_degrades_on_a_burst_of_failures_and_grows_back() {
        // At start every key's first attempt fails before any retry answers: the window
        // is all failures, with no other endpoint.
        let start = Instant::now();
        let mut breaker = Breaker::new(&BreakerSpec::default());
        for _ in 0..40 {
            breaker.failure(start, false);
        }
        assert!(breaker.is_degraded(), "degraded, not open");
        assert_eq!(breaker.retry_at(start), None, "it takes requests now");
        // Then half the requests fail (a failed first attempt, a successful retry), with
        // far more offered than it lets through: it lets `probes` through, then twice as
        // many each second, until it no longer holds anything back.
        let (admitted, _) = offer(&mut breaker, start, 12, 2000, |n| n % 2 == 1);
        assert_eq!(admitted[0], 3, "{admitted:?}");
        for pair in admitted.windows(2).take(8) {
            assert!(pair[1] >= pair[0] * 3 / 2, "grows: {admitted:?}");
        }
        assert!(
            admitted[10..].iter().all(|&n| n == 2000),
            "half the answers healthy: nothing held back after a few seconds: {admitted:?}"
        );
    }

    #[test]
    fn an_endpoint_recovering_from_an_outage_into_partial_health_grows_back() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&BreakerSpec::default());
        // A full outage: a few requests a second at most, never none.
        let (dead, later) = offer(&mut breaker, start, 30, 500, |_| false);
        // `min_calls` failures close to nothing, then `probes` in that interval, then one
        // request a second.
        assert_eq!(dead[0], 10 + 3, "{dead:?}");
        assert!(dead[1..].iter().all(|&n| n == FLOOR), "{dead:?}");
        // One bad pod of two: every other request fails.
        let (admitted, _) = offer(&mut breaker, later, 15, 500, |n| n % 2 == 0);
        assert!(admitted.iter().all(|&n| n >= FLOOR), "{admitted:?}");
        assert!(
            admitted[12..].iter().all(|&n| n == 500),
            "grows back to the whole demand: {admitted:?}"
        );
        // Had it opened on every failed probe (about three requests per cooldown), this
        // would have passed a few dozen requests, not thousands.
        assert!(admitted.iter().sum::<u32>() > 3000, "{admitted:?}");
    }

    #[test]
    fn a_dead_last_endpoint_keeps_a_small_probe_rate() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&BreakerSpec::default());
        let (admitted, later) = offer(&mut breaker, start, 100, 1000, |_| false);
        assert!(
            admitted[3..].iter().all(|&n| n == FLOOR),
            "one request a second: {admitted:?}"
        );
        // Refused, it says when to come back: the next interval, never later.
        let refused = later + Duration::from_millis(500);
        assert!(breaker.try_acquire(later));
        breaker.failure(later, false);
        assert!(!breaker.try_acquire(refused));
        assert_eq!(breaker.retry_at(refused), Some(later + INTERVAL));
        assert!(breaker.try_acquire(later + INTERVAL));
    }

    #[test]
    fn a_healthy_recovery_closes_it_fully() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&BreakerSpec::default());
        let (_, later) = offer(&mut breaker, start, 10, 100, |_| false);
        assert!(breaker.is_degraded());
        let (admitted, after) = offer(&mut breaker, later, 5, 100, |_| true);
        assert!(breaker.is_closed(), "{admitted:?}");
        assert_eq!(admitted[4], 100, "{admitted:?}");
        // Closed, it weighs a fresh window: a few failures do not trip it.
        for _ in 0..5 {
            breaker.failure(after, false);
        }
        assert!(breaker.is_closed());
    }

    #[test]
    fn an_endpoint_flapping_around_the_rate_keeps_its_pace() {
        // Just under and just over half failing: it closes and degrades again, but each
        // time with an allowance from the healthy answers it had, not from scratch.
        let start = Instant::now();
        let mut breaker = Breaker::new(&BreakerSpec::default());
        let (_, later) = offer(&mut breaker, start, 12, 400, |n| n % 2 == 1);
        let (admitted, _) = offer(&mut breaker, later, 20, 400, |n| n % 5 < 2 || n % 7 == 0);
        assert!(admitted.iter().all(|&n| n == 400), "{admitted:?}");
    }

    #[test]
    fn another_closed_endpoint_lets_a_degraded_one_open() {
        let start = Instant::now();
        let mut breaker = Breaker::new(&spec());
        for _ in 0..4 {
            breaker.failure(start, false);
        }
        assert!(breaker.is_degraded());
        breaker.failure(start, true);
        assert!(breaker.is_open() && !breaker.is_degraded());
        assert!(!breaker.try_acquire(start + Duration::from_secs(1)));
    }
}
