//! The wall clock as evrouter stores it: milliseconds and microseconds since the Unix
//! epoch, and RFC 3339 text for CloudEvents' `time`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    since_epoch().as_micros() as u64
}

/// The current time as RFC 3339 with microseconds, as CloudEvents' `time`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_agree() {
        let (ms, us) = (now_ms(), now_us());
        assert!(ms > 1_600_000_000_000, "{ms} is not a time after 2020");
        assert!(us / 1000 >= ms && us / 1000 - ms < 1000);
        assert!(now_rfc3339().ends_with('Z'));
    }
}
