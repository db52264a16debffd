//! What a subscriber's answer means, by Dapr's rules: decided in one place.

use bytes::Bytes;

pub use crate::delivery::transport::Outcome;

/// How an attempt ended, before classification.
#[derive(Debug)]
pub enum Answer {
    /// The subscriber answered.
    Http {
        /// Status code.
        status: u16,
        /// Outcome by Dapr's rules.
        outcome: Outcome,
        /// The answer's body (at most a few kilobytes are read).
        body: Bytes,
    },
    /// No answer: connection error or timeout.
    Failed(String),
}

impl Answer {
    /// Whether the endpoint looks healthy after this answer (for its breaker).
    pub fn healthy(&self) -> bool {
        match self {
            Answer::Http { status, .. } => *status < 500 && *status != 429 && *status != 408,
            Answer::Failed(_) => false,
        }
    }
}

/// Classifies an HTTP answer: 2xx is success unless the body says `{"status":"RETRY"}`,
/// `"DROP"` or a status it does not know (retried); 404 drops; anything else retries.
pub fn classify(status: u16, body: &[u8]) -> Outcome {
    match status {
        200..=299 => match body_status(body) {
            None => Outcome::Delivered,
            Some(said) => status_outcome(&said),
        },
        404 => Outcome::Drop("subscriber answered 404".into()),
        other => Outcome::Retry(format!("subscriber answered {other}")),
    }
}

/// What a Dapr status word means (`SUCCESS`, `RETRY`, `DROP`, upper-cased): of a whole
/// answer, or of one entry of a bulk answer. Dapr retries a status it does not know.
pub fn status_outcome(status: &str) -> Outcome {
    match status {
        "SUCCESS" => Outcome::Delivered,
        "RETRY" => Outcome::Retry("subscriber answered RETRY".into()),
        "DROP" => Outcome::Drop("subscriber answered DROP".into()),
        other => Outcome::Retry(format!("subscriber answered unknown status `{other}`")),
    }
}

/// The `status` field of a JSON object body, upper-cased, if there is one.
fn body_status(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Status {
        status: Option<String>,
    }
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[trimmed] != b'{' {
        return None;
    }
    serde_json::from_slice::<Status>(body)
        .ok()?
        .status
        .map(|s| s.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_rules() {
        assert_eq!(classify(200, b""), Outcome::Delivered);
        assert_eq!(classify(204, b""), Outcome::Delivered);
        assert_eq!(classify(200, b"ok"), Outcome::Delivered);
        assert_eq!(classify(200, br#"{"other":1}"#), Outcome::Delivered);
        assert_eq!(
            classify(200, br#"{"status":"SUCCESS"}"#),
            Outcome::Delivered
        );
        assert!(matches!(
            classify(200, br#"{"status":"RETRY"}"#),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            classify(200, br#"{"status":"drop"}"#),
            Outcome::Drop(_)
        ));
        assert!(matches!(
            classify(200, br#"{"status":"MAYBE"}"#),
            Outcome::Retry(_)
        ));
        assert!(matches!(classify(404, b""), Outcome::Drop(_)));
        assert!(matches!(classify(500, b""), Outcome::Retry(_)));
        assert!(matches!(classify(429, b""), Outcome::Retry(_)));
        assert!(matches!(
            classify(400, br#"{"status":"SUCCESS"}"#),
            Outcome::Retry(_)
        ));
    }
}
