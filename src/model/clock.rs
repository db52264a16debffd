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
    rfc3339_micros(since_epoch())
}

thread_local! {
    /// The second last written and its text up to the seconds (`2026-12-07T15:33:00.`):
    /// a busy publisher writes the same second thousands of times.
    static SECOND: std::cell::RefCell<(u64, String)> = const {
        std::cell::RefCell::new((u64::MAX, String::new()))
    };
}

/// `since` after the epoch as RFC 3339 with microseconds (`…T15:33:00.123456Z`).
fn rfc3339_micros(since: std::time::Duration) -> String {
    let second = since.as_secs();
    let micros = since.subsec_micros();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + since).to_string();
            // `…:00Z` without its `Z`, then the fraction's point.
            let mut prefix = text.trim_end_matches('Z').to_string();
            prefix.push('.');
            *cached = (second, prefix);
        }
        let mut out = String::with_capacity(cached.1.len() + 7);
        out.push_str(&cached.1);
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend(digits.iter().map(|&d| d as char));
        out.push('Z');
        out
    })
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

    #[test]
    fn rfc3339_text_is_humantimes_whether_the_second_is_cached_or_not() {
        for micros in [
            0u64,
            1,
            999_999,
            1_765_000_000_000_000,
            1_765_000_000_000_001,
            1_765_000_000_999_999,
            1_765_000_001_000_000,
            1_765_000_000_000_000,
        ] {
            let since = std::time::Duration::from_micros(micros);
            assert_eq!(
                rfc3339_micros(since),
                humantime::format_rfc3339_micros(UNIX_EPOCH + since).to_string(),
                "{micros}"
            );
        }
    }
}
