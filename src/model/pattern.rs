//! Topic patterns, as streams and subscriptions write them: exact names, `*` for one
//! segment, `>` for one or more trailing segments (as in NATS), and `re:` for a regex.

use regex::Regex;

/// A compiled topic pattern.
#[derive(Debug, Clone)]
pub enum TopicPattern {
    /// Matches one topic exactly.
    Exact(String),
    /// Segment-wise match with `*` and a trailing `>`.
    Wildcard(Vec<Segment>),
    /// A regular expression over the whole topic.
    Regex(Regex),
}

/// One segment of a wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// This exact segment.
    Literal(String),
    /// Any one segment.
    Any,
    /// One or more trailing segments (only last).
    Rest,
}

/// Why a pattern could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// The pattern is empty or has an empty segment.
    #[error("topic pattern `{0}` has an empty segment")]
    EmptySegment(String),
    /// `>` appears before the last segment.
    #[error("topic pattern `{0}`: `>` may only be the last segment")]
    RestNotLast(String),
    /// A segment mixes wildcards with other characters or uses bad characters.
    #[error("topic pattern `{0}`: segment `{1}` must be `*`, `>` or lowercase letters, digits, `_`, `-`")]
    BadSegment(String, String),
    /// The regular expression does not compile.
    #[error("topic pattern `{0}`: {1}")]
    BadRegex(String, String),
}

impl TopicPattern {
    /// Compiles a pattern.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if let Some(re) = pattern.strip_prefix("re:") {
            return Regex::new(re)
                .map(TopicPattern::Regex)
                .map_err(|e| PatternError::BadRegex(pattern.to_string(), e.to_string()));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" => return Err(PatternError::EmptySegment(pattern.to_string())),
                "*" => Segment::Any,
                ">" if i + 1 == parts.len() => Segment::Rest,
                ">" => return Err(PatternError::RestNotLast(pattern.to_string())),
                literal if crate::model::topic::is_valid_segment(literal) => {
                    Segment::Literal(literal.to_string())
                }
                other => {
                    return Err(PatternError::BadSegment(
                        pattern.to_string(),
                        other.to_string(),
                    ))
                }
            };
            segments.push(segment);
        }
        if segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
            Ok(TopicPattern::Exact(pattern.to_string()))
        } else {
            Ok(TopicPattern::Wildcard(segments))
        }
    }

    /// Whether some topic whose first segment is `domain` could match.
    pub fn may_match_domain(&self, domain: &str) -> bool {
        match self {
            TopicPattern::Exact(exact) => crate::model::topic::domain(exact) == domain,
            TopicPattern::Regex(_) => true,
            TopicPattern::Wildcard(segments) => match segments.first() {
                Some(Segment::Literal(lit)) => lit == domain,
                _ => true,
            },
        }
    }

    /// The first segment when it is a literal.
    pub fn literal_domain(&self) -> Option<String> {
        match self {
            TopicPattern::Exact(exact) => Some(crate::model::topic::domain(exact).to_string()),
            TopicPattern::Wildcard(segments) => match segments.first() {
                Some(Segment::Literal(lit)) => Some(lit.clone()),
                _ => None,
            },
            TopicPattern::Regex(_) => None,
        }
    }

    /// The pattern as a POSIX regular expression (PostgreSQL's `~`) matching the same
    /// topics, so that a database can filter by it; a `re:` pattern is given as written.
    pub fn to_posix_regex(&self) -> String {
        match self {
            TopicPattern::Exact(exact) => format!("^{}$", exact.replace('.', "\\.")),
            TopicPattern::Regex(re) => re.as_str().to_string(),
            TopicPattern::Wildcard(segments) => {
                let parts: Vec<String> = segments
                    .iter()
                    .map(|segment| match segment {
                        Segment::Literal(lit) => lit.clone(),
                        Segment::Any => "[^.]+".into(),
                        Segment::Rest => ".+".into(),
                    })
                    .collect();
                format!("^{}$", parts.join("\\."))
            }
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(exact) => exact == topic,
            TopicPattern::Regex(re) => re.is_match(topic),
            TopicPattern::Wildcard(segments) => {
                let mut parts = topic.split('.');
                for segment in segments {
                    match segment {
                        Segment::Rest => return parts.next().is_some(),
                        Segment::Any => {
                            if parts.next().is_none() {
                                return false;
                            }
                        }
                        Segment::Literal(lit) => {
                            if parts.next() != Some(lit.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

impl TopicPattern {
    /// Whether every topic `other` matches is matched by `self` too (for rights: a
    /// subscription's pattern must stay within what its owner may read). Decided on the
    /// patterns' shapes; a regex is covered only by `>`-everything or by the same regex.
    pub fn covers(&self, other: &TopicPattern) -> bool {
        match (self, other) {
            (_, TopicPattern::Exact(topic)) => self.matches(topic),
            (TopicPattern::Regex(a), TopicPattern::Regex(b)) => a.as_str() == b.as_str(),
            (TopicPattern::Wildcard(mine), TopicPattern::Regex(_)) => {
                matches!(mine.as_slice(), [Segment::Rest])
            }
            (TopicPattern::Exact(_), _) => false,
            (TopicPattern::Regex(_), TopicPattern::Wildcard(_)) => false,
            (TopicPattern::Wildcard(mine), TopicPattern::Wildcard(theirs)) => {
                segments_cover(mine, theirs)
            }
        }
    }
}

/// Whether segment list `a` matches every topic `b` matches.
fn segments_cover(a: &[Segment], b: &[Segment]) -> bool {
    match (a.first(), b.first()) {
        (None, None) => true,
        // `>` takes one or more segments: it covers whatever is left of `b`, if `b` has at
        // least one segment left.
        (Some(Segment::Rest), Some(_)) => true,
        (Some(_), Some(Segment::Rest)) | (None, Some(_)) | (Some(_), None) => false,
        (Some(Segment::Any), Some(_)) => segments_cover(&a[1..], &b[1..]),
        (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x == y => {
            segments_cover(&a[1..], &b[1..])
        }
        (Some(Segment::Literal(_)), Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(a: &str, b: &str) -> bool {
        let a = TopicPattern::parse(a).expect("valid pattern");
        a.covers(&TopicPattern::parse(b).expect("valid pattern"))
    }

    #[test]
    fn a_pattern_covers_what_it_is_wider_than() {
        for (a, b) in [
            ("order.>", "order.created"),
            ("order.>", "order.*"),
            ("order.>", "order.>"),
            ("order.>", "order.*.v2"),
            ("*.created", "order.created"),
            ("*.*", "order.*"),
            (">", "re:^order\\..*$"),
            (">", "order.>"),
            ("re:^a$", "re:^a$"),
            ("order.created", "order.created"),
        ] {
            assert!(covers(a, b), "{a} should cover {b}");
        }
        for (a, b) in [
            ("order.*", "order.>"),
            ("order.*", "order.created.v2"),
            ("order.>", "payment.*"),
            ("order.>", ">"),
            ("order.>", "*.created"),
            ("order.created", "order.*"),
            ("order.>", "re:^order\\..*$"),
            ("*.created", "*.>"),
        ] {
            assert!(!covers(a, b), "{a} should not cover {b}");
        }
    }

    fn m(pattern: &str, topic: &str) -> bool {
        TopicPattern::parse(pattern)
            .expect("valid pattern")
            .matches(topic)
    }

    #[test]
    fn exact_star_rest_and_regex() {
        assert!(m("order.created", "order.created"));
        assert!(!m("order.created", "order.created.v2"));
        assert!(m("order.*", "order.created"));
        assert!(!m("order.*", "order.created.v2"));
        assert!(!m("order.*", "order"));
        assert!(m("order.>", "order.created"));
        assert!(m("order.>", "order.created.v2"));
        assert!(!m("order.>", "order"));
        assert!(!m("order.>", "orders.created"));
        assert!(m("*.created", "customer.created"));
        assert!(m(r"re:^payment\.(captured|refunded)$", "payment.captured"));
        assert!(!m(r"re:^payment\.(captured|refunded)$", "payment.failed"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(TopicPattern::parse("order..x").is_err());
        assert!(TopicPattern::parse("order.>.x").is_err());
        assert!(TopicPattern::parse("Order.x").is_err());
        assert!(TopicPattern::parse("order.cr*").is_err());
        assert!(TopicPattern::parse("re:(").is_err());
    }

    #[test]
    fn posix_regexes_match_what_the_patterns_match() {
        let topics = [
            "order.created",
            "order.created.v2",
            "order",
            "orderxcreated",
            "payment.captured",
            "order.paid",
        ];
        for pattern in [
            "order.created",
            "order.*",
            "order.>",
            "*.created",
            ">",
            "re:^pay",
        ] {
            let compiled = TopicPattern::parse(pattern).expect("pattern");
            let posix = Regex::new(&compiled.to_posix_regex()).expect("regex");
            for topic in topics {
                assert_eq!(
                    posix.is_match(topic),
                    compiled.matches(topic),
                    "{pattern} on {topic}"
                );
            }
        }
    }
}
