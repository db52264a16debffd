//! W3C trace context: checking a `traceparent`, reading it into ids, and making a new one.

/// A `traceparent` read into its ids: the trace, the span it names, and the flags
/// (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never 0).
    pub trace_id: u128,
    /// The span id (never 0).
    pub span_id: u64,
    /// The trace flags.
    pub flags: u8,
}

impl TraceContext {
    /// Reads a well-formed `traceparent`, in one pass over its 55 bytes.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        // Lowercase hex only, as the W3C format has it; at most 16 digits at a time.
        let number = |range: std::ops::Range<usize>| {
            b[range].iter().try_fold(0u64, |n, c| {
                let digit = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    _ => return None,
                };
                Some(n << 4 | u64::from(digit))
            })
        };
        let version = number(0..2)?;
        let trace_id = u128::from(number(3..19)?) << 64 | u128::from(number(19..35)?);
        let span_id = number(36..52)?;
        let flags = number(53..55)? as u8;
        (version != 0xff && trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new span of the same trace, with the same flags.
    pub fn child(&self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// A span of a new trace; `sampled` sets the flags.
    pub fn root(sampled: bool) -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            flags: u8::from(sampled),
        }
    }

    /// Whether the trace is sampled (recorded).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// As a `traceparent` header value.
    pub fn to_traceparent(&self) -> String {
        traceparent(self.trace_id, self.span_id, self.flags)
    }
}

/// Whether `value` is a well-formed `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not
/// all zero).
pub fn is_valid_traceparent(value: &str) -> bool {
    TraceContext::parse(value).is_some()
}

/// A new sampled `traceparent` with random trace and span ids.
pub fn new_traceparent() -> String {
    traceparent(fastrand::u128(1..), fastrand::u64(1..), 1)
}

/// `00-{trace:032x}-{span:016x}-{flags:02x}`, written digit by digit (a `format!` of
/// padded hex costs several times more, once per published event).
fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    let mut put = |at: usize, digits: usize, value: u128| {
        for i in 0..digits {
            out[at + i] = HEX[(value >> (4 * (digits - 1 - i)) & 0xf) as usize];
        }
    };
    put(3, 32, trace_id);
    put(36, 16, u128::from(span_id));
    put(53, 2, u128::from(flags));
    // Every byte is ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

/// The trace id of a well-formed `traceparent` (as [`TraceContext::parse`] reads one),
/// its 32 digits as written, checked without being turned into numbers.
pub fn trace_id_of(value: &str) -> Option<&str> {
    let b = value.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|&c| c != b'0');
    (b.len() == 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[0..2])
        && &b[0..2] != b"ff"
        && hex(&b[3..35])
        && nonzero(&b[3..35])
        && hex(&b[36..52])
        && nonzero(&b[36..52])
        && hex(&b[53..55]))
    .then(|| &value[3..35])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_contexts_read_back_the_same() {
        for context in [
            TraceContext {
                trace_id: 1,
                span_id: u64::MAX,
                flags: 0,
            },
            TraceContext {
                trace_id: u128::MAX - 5,
                span_id: 0x0af7_6519_16cd_43dd,
                flags: 1,
            },
        ] {
            let text = context.to_traceparent();
            assert_eq!(
                text,
                format!(
                    "00-{:032x}-{:016x}-{:02x}",
                    context.trace_id, context.span_id, context.flags
                )
            );
            assert_eq!(TraceContext::parse(&text), Some(context));
        }
    }

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

    #[test]
    fn a_context_reads_and_writes_a_traceparent() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ctx = TraceContext::parse(text).expect("valid");
        assert_eq!(ctx.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(ctx.span_id, 0xb7ad6b7169203331);
        assert!(ctx.sampled());
        assert_eq!(ctx.to_traceparent(), text);
        let child = ctx.child();
        assert_eq!((child.trace_id, child.flags), (ctx.trace_id, ctx.flags));
        assert_ne!(child.span_id, ctx.span_id);
        assert!(!TraceContext::root(false).sampled());
        assert!(is_valid_traceparent(
            &TraceContext::root(true).to_traceparent()
        ));
        assert_eq!(TraceContext::parse("00-abc"), None);
    }

    #[test]
    fn a_trace_id_is_read_where_a_context_parses() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut cases = vec![good.to_string()];
        for (at, byte) in [
            (0, 'f'),
            (1, 'f'),
            (3, 'A'),
            (10, 'g'),
            (2, '_'),
            (40, ' '),
            (54, 'x'),
        ] {
            let mut bytes = good.as_bytes().to_vec();
            bytes[at] = byte as u8;
            cases.push(String::from_utf8(bytes).expect("ascii"));
        }
        cases.push(format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)));
        cases.push(format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            "0".repeat(16)
        ));
        cases.push("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        cases.push(format!("{good}0"));
        cases.push(String::new());
        for case in &cases {
            assert_eq!(
                trace_id_of(case),
                TraceContext::parse(case).map(|_| &case[3..35]),
                "{case}"
            );
        }
        assert_eq!(trace_id_of(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }
}
