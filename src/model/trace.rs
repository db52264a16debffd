//! W3C trace context: checking a `traceparent` and making a new one.

/// Whether `value` is a well-formed `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not
/// all zero).
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// A new sampled `traceparent` with random trace and span ids.
pub fn new_traceparent() -> String {
    let trace = fastrand::u128(1..);
    let span = fastrand::u64(1..);
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_traceparents_are_valid() {
        for _ in 0..100 {
            assert!(is_valid_traceparent(&new_traceparent()));
        }
        assert!(is_valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-b7ad6b7169203331-01"
        ));
        assert!(!is_valid_traceparent(
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"
        ));
        assert!(!is_valid_traceparent("garbage"));
    }
}
