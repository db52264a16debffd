//! Publish quotas of a principal: events per second and bytes per second, each a token
//! bucket (governor's GCRA, lock-free) holding one second of its rate, so that a publisher
//! at ten times its quota is refused quickly and leaves the others their share.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota as Rate, RateLimiter};

/// Why a publish was refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Limited {
    /// What the limit is and what went over it.
    pub message: String,
    /// When to try again (none when the request can never fit).
    pub retry_after: Option<Duration>,
}

/// A principal's publish quotas.
#[derive(Debug)]
pub struct Quota {
    events: Option<(u32, DefaultDirectRateLimiter)>,
    bytes: Option<(u32, DefaultDirectRateLimiter)>,
}

impl Quota {
    /// Quotas of `events_per_s` and `bytes_per_s` (0: no limit).
    pub fn new(events_per_s: u32, bytes_per_s: u32) -> Self {
        let limiter = |rate: u32| {
            NonZeroU32::new(rate).map(|r| (rate, RateLimiter::direct(Rate::per_second(r))))
        };
        Self {
            events: limiter(events_per_s),
            bytes: limiter(bytes_per_s),
        }
    }

    /// Whether any limit is set.
    pub fn limits(&self) -> bool {
        self.events.is_some() || self.bytes.is_some()
    }

    /// Takes `events` and `bytes` from the buckets, or says when to come back.
    pub fn admit(&self, who: &str, events: usize, bytes: usize) -> Result<(), Limited> {
        for (limiter, amount, unit) in [
            (&self.bytes, bytes, "bytes"),
            (&self.events, events, "events"),
        ] {
            let Some((rate, limiter)) = limiter else {
                continue;
            };
            let Some(n) = u32::try_from(amount).ok().and_then(NonZeroU32::new) else {
                continue;
            };
            match limiter.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(Limited {
                        message: format!(
                            "principal `{who}` may publish {rate} {unit}/s; this request of {amount} \
                             {unit} is over it: retry after {wait:.2?}"
                        ),
                        retry_after: Some(wait),
                    });
                }
                Err(_) => {
                    return Err(Limited {
                        message: format!(
                            "principal `{who}` may publish {rate} {unit}/s; a request of {amount} \
                             {unit} can never fit: send smaller batches"
                        ),
                        retry_after: None,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_one_second_and_then_refuses_with_a_wait() {
        let quota = Quota::new(100, 0);
        assert!(quota.admit("p", 60, 10).is_ok());
        assert!(quota.admit("p", 40, 10).is_ok());
        let limited = quota.admit("p", 50, 10).unwrap_err();
        let wait = limited.retry_after.expect("a wait");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limited.message.contains("100 events/s"),
            "{}",
            limited.message
        );
        assert!(quota.admit("p", 50, 10).is_err(), "a refusal takes nothing");
        let never = quota.admit("p", 101, 10).unwrap_err();
        assert!(never.retry_after.is_none());
        let bytes = Quota::new(0, 1000);
        assert!(bytes.admit("p", 1, 900).is_ok());
        assert!(bytes.admit("p", 1, 900).is_err());
        assert!(!Quota::new(0, 0).limits());
    }
}
