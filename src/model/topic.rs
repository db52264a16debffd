//! Topic names: lowercase, dot-separated segments such as `order.created`.

/// Longest topic name accepted.
pub const MAX_TOPIC_LEN: usize = 249;

/// Whether `segment` is one valid topic segment: lowercase ASCII letters, digits, `_`, `-`,
/// starting with a letter or digit.
pub fn is_valid_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    !bytes.is_empty()
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Checks a topic name, returning why it is refused.
pub fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic is empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err("topic is longer than 249 characters");
    }
    if topic.split('.').all(is_valid_segment) {
        Ok(())
    } else {
        Err("topic must be lowercase dot-separated segments of letters, digits, `_` or `-`")
    }
}

/// The domain of a topic: its first segment.
pub fn domain(topic: &str) -> &str {
    topic.split('.').next().unwrap_or(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(check_topic("order.created").is_ok());
        assert!(check_topic("customer.profile.updated").is_ok());
        assert!(check_topic("Order.created").is_err());
        assert!(check_topic("order..created").is_err());
        assert!(check_topic("").is_err());
        assert!(check_topic(&"a".repeat(300)).is_err());
        assert_eq!(domain("order.created"), "order");
    }
}
