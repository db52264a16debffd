//! A shard's retry timers: lanes put back until a deadline (a retry's backoff, a
//! subscriber that takes nothing for now, an endpoint's cooldown), kept in one index
//! ordered by deadline, so that the shard's one task sleeps only until the earliest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Among lanes due at the same instant, those waiting for an endpoint with their head's
/// last attempt left come after every lane retried or tried with attempts to spare.
const LAST: u64 = 1 << 62;
/// ... and heads never tried come after those.
const FRESH: u64 = 1 << 63;

/// Lanes waiting for a deadline, earliest first.
#[derive(Debug, Default)]
pub(super) struct RetryTimers {
    /// (deadline, order among lanes due at the same instant) → lane.
    due: BTreeMap<(Instant, u64), Arc<str>>,
    /// Counts insertions: the order of lanes due at the same instant.
    seq: u64,
}

impl RetryTimers {
    /// Puts `lane` back until `at`, after the lanes already due then.
    pub(super) fn insert(&mut self, at: Instant, lane: Arc<str>) {
        self.seq += 1;
        self.due.insert((at, self.seq), lane);
    }

    /// Puts `lane`, whose head has made `attempts` of `max_attempts`, back until `until`,
    /// when an endpoint lets a request through again, in this order then: lanes whose head
    /// was tried and has attempts to spare, the last tried first; then heads with one
    /// attempt left, and fresh heads, each in the order they came. A retry is what
    /// succeeds on a subscriber that fails first attempts, and successes are what grow a
    /// degraded endpoint's allowance back: heads tried in turn across many keys could fail
    /// every request of a small allowance for as long as the turn lasts. A head's last
    /// attempt waits its turn, so that a long outage does not dead-letter the events tried
    /// first one after the other.
    pub(super) fn wait_for_endpoint(
        &mut self,
        lane: Arc<str>,
        until: Instant,
        attempts: u32,
        max_attempts: u32,
    ) {
        self.seq += 1;
        let seq = self.seq;
        let order = match attempts {
            0 => FRESH | seq,
            n if n.saturating_add(1) < max_attempts => LAST - 1 - seq,
            _ => LAST | seq,
        };
        self.due.insert((until, order), lane);
    }

    /// The earliest deadline, when a lane waits.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// Takes out the lanes due by `now`, earliest first.
    pub(super) fn pop_due(&mut self, now: Instant) -> impl Iterator<Item = Arc<str>> + '_ {
        std::iter::from_fn(move || {
            let entry = self.due.first_entry()?;
            if entry.key().0 > now {
                return None;
            }
            Some(entry.remove())
        })
    }

    /// Number of lanes waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::{advance, sleep_until};

    /// Now on tokio's clock, which paused time moves.
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn lane(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn due(timers: &mut RetryTimers) -> Vec<String> {
        timers.pop_due(now()).map(|l| l.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_comes_due_when_its_backoff_has_passed_not_before() {
        let mut timers = RetryTimers::default();
        timers.insert(now() + Duration::from_millis(100), lane("a"));
        assert!(due(&mut timers).is_empty());
        advance(Duration::from_millis(99)).await;
        assert!(due(&mut timers).is_empty());
        advance(Duration::from_millis(1)).await;
        assert_eq!(due(&mut timers), ["a"]);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_sleep_until_the_earliest_deadline_wakes_each_lane_in_its_turn() {
        let start = now();
        let mut timers = RetryTimers::default();
        timers.insert(start + Duration::from_millis(400), lane("c"));
        timers.insert(start + Duration::from_millis(100), lane("a"));
        timers.insert(start + Duration::from_millis(250), lane("b"));
        let mut woken = Vec::new();
        while let Some(at) = timers.next_deadline() {
            sleep_until(at.into()).await;
            for lane in timers.pop_due(now()) {
                woken.push((now() - start, lane.to_string()));
            }
        }
        assert_eq!(
            woken,
            [
                (Duration::from_millis(100), "a".to_string()),
                (Duration::from_millis(250), "b".to_string()),
                (Duration::from_millis(400), "c".to_string()),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lanes_due_at_the_same_instant_come_in_the_order_they_were_put_back() {
        let at = now() + Duration::from_millis(50);
        let mut timers = RetryTimers::default();
        for name in ["x", "y", "z"] {
            timers.insert(at, lane(name));
        }
        advance(Duration::from_millis(50)).await;
        assert_eq!(due(&mut timers), ["x", "y", "z"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_an_endpoint_puts_retries_first_and_last_attempts_before_fresh_heads() {
        let until = now() + Duration::from_secs(5);
        let mut timers = RetryTimers::default();
        // Of 3 attempts: 0 made is fresh, 1 has attempts to spare, 2 leaves the last.
        timers.wait_for_endpoint(lane("fresh-1"), until, 0, 3);
        timers.wait_for_endpoint(lane("tried-1"), until, 1, 3);
        timers.wait_for_endpoint(lane("last-1"), until, 2, 3);
        timers.wait_for_endpoint(lane("tried-2"), until, 1, 3);
        timers.wait_for_endpoint(lane("fresh-2"), until, 0, 3);
        timers.wait_for_endpoint(lane("last-2"), until, 2, 3);
        advance(Duration::from_millis(4999)).await;
        assert!(due(&mut timers).is_empty());
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            due(&mut timers),
            ["tried-2", "tried-1", "last-1", "last-2", "fresh-1", "fresh-2"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_retry_goes_before_lanes_waiting_for_a_later_endpoint() {
        let mut timers = RetryTimers::default();
        timers.wait_for_endpoint(lane("waits"), now() + Duration::from_secs(1), 1, 5);
        timers.insert(now() + Duration::from_millis(200), lane("retry"));
        assert_eq!(
            timers.next_deadline(),
            Some(now() + Duration::from_millis(200))
        );
        advance(Duration::from_secs(1)).await;
        assert_eq!(due(&mut timers), ["retry", "waits"]);
    }
}
