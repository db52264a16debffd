//! What one event's outcome does to it: decided in one pure function from the outcome, the
//! attempts made and the subscription's retry policy.

use std::time::Duration;

use crate::delivery::transport::Outcome;
use crate::model::subscription::SubscriptionSpec;

/// What becomes of an event after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
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

/// Decides an event's fate after attempt number `attempts` ended in `outcome`; `unit` in
/// [0, 1) is the jitter's draw.
pub fn decide(outcome: &Outcome, attempts: u32, spec: &SubscriptionSpec, unit: f64) -> Decision {
    match outcome {
        Outcome::Delivered => Decision::Delivered,
        Outcome::Drop(reason) => Decision::Dropped(reason.clone()),
        Outcome::Retry(reason) if attempts >= spec.max_attempts => Decision::Exhausted {
            reason: reason.clone(),
        },
        Outcome::Retry(reason) => Decision::Retry {
            after: Duration::from_millis(spec.backoff.delay_ms(attempts, unit)),
            reason: reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_and_attempt_count_has_one_decision() {
        let spec = SubscriptionSpec {
            max_attempts: 3,
            ..SubscriptionSpec::default()
        };
        let retry = || Outcome::Retry("subscriber answered 503".into());
        let table: Vec<(Outcome, u32, Decision)> = vec![
            (Outcome::Delivered, 1, Decision::Delivered),
            (Outcome::Delivered, 3, Decision::Delivered),
            (
                Outcome::Drop("subscriber answered 404".into()),
                1,
                Decision::Dropped("subscriber answered 404".into()),
            ),
            (
                retry(),
                1,
                Decision::Retry {
                    after: Duration::from_millis(100),
                    reason: "subscriber answered 503".into(),
                },
            ),
            (
                retry(),
                2,
                Decision::Retry {
                    after: Duration::from_millis(200),
                    reason: "subscriber answered 503".into(),
                },
            ),
            (
                retry(),
                3,
                Decision::Exhausted {
                    reason: "subscriber answered 503".into(),
                },
            ),
            (
                retry(),
                7,
                Decision::Exhausted {
                    reason: "subscriber answered 503".into(),
                },
            ),
        ];
        for (outcome, attempts, expected) in table {
            // 0.5 is the jitter's middle: no spread.
            assert_eq!(
                decide(&outcome, attempts, &spec, 0.5),
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
        let decided = decide(&Outcome::Drop("DROP".into()), 1, &spec, 0.5);
        assert_eq!(decided, Decision::Dropped("DROP".into()));
    }
}
