//! Signed deliveries, as the Standard Webhooks specification has them: `webhook-id`,
//! `webhook-timestamp` (seconds) and `webhook-signature`, `v1,` and the base64 of
//! HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed with the secret's bytes (the base64
//! after `whsec_`); during a rotation one signature per valid secret, separated by spaces.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::signing::SigningSecrets;

/// The three headers of one signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
}

/// Signs `body` of message `id` at `now_ms` with every secret valid then.
pub fn sign(secrets: &SigningSecrets, id: &str, now_ms: u64, body: &[u8]) -> Signed {
    let timestamp = (now_ms / 1000).to_string();
    let signature = secrets
        .signing(now_ms)
        .filter_map(|secret| {
            let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            Some(format!(
                "v1,{}",
                STANDARD.encode(mac.finalize().into_bytes())
            ))
        })
        .collect::<Vec<_>>()
        .join(" ");
    Signed {
        id: id.to_string(),
        timestamp,
        signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specifications_example() {
        // The Standard Webhooks specification's own test vector.
        let secrets = SigningSecrets {
            current: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            previous: None,
            previous_until_ms: 0,
        };
        let body = br#"{"test": 2432232314}"#;
        let signed = sign(
            &secrets,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330_000,
            body,
        );
        assert_eq!(signed.timestamp, "1614265330");
        assert_eq!(
            signed.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_rotation_signs_with_both_secrets_until_the_old_one_expires() {
        let old = SigningSecrets::generate();
        let rotated = old.rotated(1_000);
        let during = sign(&rotated, "m", 2_000, b"{}");
        assert_eq!(during.signature.split(' ').count(), 2);
        let after = sign(&rotated, "m", rotated.previous_until_ms, b"{}");
        assert_eq!(after.signature.split(' ').count(), 1);
    }
}
