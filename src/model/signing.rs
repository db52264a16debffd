//! A subscription's signing secrets (Standard Webhooks): the current one, and during a
//! rotation the previous one, still valid until a time, so that subscribers can switch
//! without refusing deliveries.

use serde::{Deserialize, Serialize};

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP_MS: u64 = 24 * 3600 * 1000;

/// The secrets of one subscription, each `whsec_` and base64 of 32 random bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecrets {
    /// Signs every delivery.
    pub current: String,
    /// Also signs deliveries until `previous_until_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// When the previous secret stops signing, ms since the epoch.
    #[serde(default)]
    pub previous_until_ms: u64,
}

impl SigningSecrets {
    /// A new secret, with nothing to rotate from.
    pub fn generate() -> Self {
        Self {
            current: new_secret(),
            previous: None,
            previous_until_ms: 0,
        }
    }

    /// These secrets after a rotation at `now_ms`: a new current one, the old one kept for
    /// [`ROTATION_OVERLAP_MS`].
    pub fn rotated(&self, now_ms: u64) -> Self {
        Self {
            current: new_secret(),
            previous: Some(self.current.clone()),
            previous_until_ms: now_ms + ROTATION_OVERLAP_MS,
        }
    }

    /// The secrets that sign at `now_ms`.
    pub fn signing(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        let previous = self
            .previous
            .as_deref()
            .filter(|_| now_ms < self.previous_until_ms);
        std::iter::once(self.current.as_str()).chain(previous)
    }
}

fn new_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    // The operating system's generator; without it no secret can be made safely.
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}
