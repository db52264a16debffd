//! The retry verdict: what an event's outcome in one attempt does to it (delivered,
//! dropped, retried after a backoff, or exhausted), decided in one pure function from the
//! outcome, the attempts made and the subscription's retry policy.

use std::time::Duration;

use crate::delivery::transport::Outcome;
use crate::model::subscription::SubscriptionSpec;

/// What becomes of an event after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Delivered: ack it.
    Delivered,
    /// The subscriber does not want it: ack it, count it dropped.
    Dropped(String),
    /// Send it again after `after`; its key waits.
    Retry {
        /// The backoff before the next attempt.
        after: Duration,
        /// Why the attempt failed.
        reason: String,
    },
    /// Its last attempt failed: to the DLQ (or dropped when the subscription keeps none).
    Exhausted {
        /// Why the last attempt failed.
        reason: String,
    },
}

impl Verdict {
    /// The verdict on an event whose attempt number `attempts` ended in `outcome`; `unit`
    /// in [0, 1) is the jitter's draw.
    pub fn of(outcome: &Outcome, attempts: u32, spec: &SubscriptionSpec, unit: f64) -> Self {
        match outcome {
            Outcome::Delivered => Self::Delivered,
            Outcome::Drop(reason) => Self::Dropped(reason.clone()),
            Outcome::Retry(reason) if attempts >= spec.max_attempts => Self::Exhausted {
                reason: reason.clone(),
            },
            Outcome::Retry(reason) => Self::Retry {
                after: Duration::from_millis(spec.backoff.delay_ms(attempts, unit)),
                reason: reason.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_and_attempt_count_has_one_verdict() {
        let spec = SubscriptionSpec {
            max_attempts: 3,
            ..SubscriptionSpec::default()
        };
        let retry = || Outcome::Retry("subscriber answered 503".into());
        let table: Vec<(Outcome, u32, Verdict)> = vec![
            (Outcome::Delivered, 1, Verdict::Delivered),
            (Outcome::Delivered, 3, Verdict::Delivered),
            (
                Outcome::Drop("subscriber answered 404".into()),
                1,
                Verdict::Dropped("subscriber answered 404".into()),
            ),
            (
                retry(),
                1,
                Verdict::Retry {
                    after: Duration::from_millis(100),
                    reason: "subscriber answered 503".into(),
                },
            ),
            (
                retry(),
                2,
                Verdict::Retry {
                    after: Duration::from_millis(200),
                    reason: "subscriber answered 503".into(),
                },
            ),
            (
                retry(),
                3,
                Verdict::Exhausted {
                    reason: "subscriber answered 503".into(),
                },
            ),
            (
                retry(),
                7,
                Verdict::Exhausted {
                    reason: "subscriber answered 503".into(),
                },
            ),
        ];
        for (outcome, attempts, expected) in table {
            // 0.5 is the jitter's middle: no spread.
            assert_eq!(
                Verdict::of(&outcome, attempts, &spec, 0.5),
                expected,
                "{outcome:?} after {attempts} attempts"
            );
        }
    }

    #[test]
    fn a_drop_on_the_last_attempt_is_still_a_drop() {
        let spec = SubscriptionSpec {
            max_attempts: 1,
            ..SubscriptionSpec::default()
        };
        let verdict = Verdict::of(&Outcome::Drop("DROP".into()), 1, &spec, 0.5);
        assert_eq!(verdict, Verdict::Dropped("DROP".into()));
    }
}
