//! The reorder buffer's tests: runs, gaps, limits and timeouts, and properties over
//! random arrival orders.

use super::*;
use proptest::prelude::*;

fn limits(on_timeout: OnTimeout) -> ReorderLimits {
    ReorderLimits {
        timeout: Duration::from_secs(1),
        on_timeout,
        max_held_per_key: 100,
        max_held: 1000,
        start: None,
    }
}

fn offer(
    buffer: &mut ReorderBuffer<u64>,
    key: &Arc<str>,
    seq: u64,
    now: Instant,
) -> (Offered<u64>, Vec<ClosedGap<u64>>) {
    let mut closed = Vec::new();
    let offered = buffer.offer(key, seq, seq, now, &mut closed);
    (offered, closed)
}

#[test]
fn holds_until_the_gap_fills_then_releases_the_run() {
    let mut buffer = ReorderBuffer::new(limits(OnTimeout::DeadLetter));
    let key: Arc<str> = "k".into();
    let now = Instant::now();
    assert_eq!(
        offer(&mut buffer, &key, 1, now).0,
        Offered::Deliver(vec![1])
    );
    assert_eq!(
        offer(&mut buffer, &key, 3, now).0,
        Offered::Held { opened: true }
    );
    assert_eq!(
        offer(&mut buffer, &key, 4, now).0,
        Offered::Held { opened: false }
    );
    assert_eq!(buffer.held(), 2);
    assert_eq!(
        offer(&mut buffer, &key, 2, now).0,
        Offered::Deliver(vec![2, 3, 4])
    );
    assert_eq!(buffer.held(), 0);
    assert_eq!(buffer.next_deadline(), None);
    assert_eq!(offer(&mut buffer, &key, 3, now).0, Offered::Duplicate(3));
}

#[test]
fn a_timed_out_gap_is_dead_lettered_with_its_missing_numbers() {
    let mut buffer = ReorderBuffer::new(limits(OnTimeout::DeadLetter));
    let key: Arc<str> = "k".into();
    let now = Instant::now();
    offer(&mut buffer, &key, 1, now);
    offer(&mut buffer, &key, 4, now);
    offer(&mut buffer, &key, 6, now);
    assert!(buffer.expire(now + Duration::from_millis(999)).is_empty());
    let closed = buffer.expire(now + Duration::from_secs(1));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].reason, CloseReason::Timeout);
    assert_eq!(closed[0].missing, vec![2..=3, 5..=5]);
    assert_eq!(missing_count(&closed[0].missing), 3);
    assert_eq!(closed[0].dead_letter, vec![4, 6]);
    assert_eq!(buffer.next_expected("k"), Some(7));
    // A straggler of a dead-lettered gap is reported, not delivered; an old number
    // that was delivered is a duplicate.
    assert_eq!(offer(&mut buffer, &key, 2, now).0, Offered::LateAfterGap(2));
    assert_eq!(offer(&mut buffer, &key, 1, now).0, Offered::Duplicate(1));
}

#[test]
fn a_released_gap_delivers_in_order_and_reports_stragglers() {
    let mut buffer = ReorderBuffer::new(limits(OnTimeout::Release));
    let key: Arc<str> = "k".into();
    let now = Instant::now();
    offer(&mut buffer, &key, 10, now);
    offer(&mut buffer, &key, 13, now);
    offer(&mut buffer, &key, 12, now);
    let closed = buffer.expire(now + Duration::from_secs(2));
    assert_eq!(closed[0].release, vec![12, 13]);
    assert_eq!(closed[0].missing, vec![11..=11]);
    assert_eq!(
        offer(&mut buffer, &key, 11, now).0,
        Offered::LateAfterGap(11)
    );
    assert_eq!(offer(&mut buffer, &key, 13, now).0, Offered::Duplicate(13));
    assert_eq!(
        offer(&mut buffer, &key, 14, now).0,
        Offered::Deliver(vec![14])
    );
}

#[test]
fn limits_close_the_oldest_gap_early() {
    let mut buffer = ReorderBuffer::new(ReorderLimits {
        max_held_per_key: 2,
        max_held: 3,
        ..limits(OnTimeout::DeadLetter)
    });
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let now = Instant::now();
    offer(&mut buffer, &a, 1, now);
    offer(&mut buffer, &a, 3, now);
    offer(&mut buffer, &a, 4, now);
    let (_, closed) = offer(&mut buffer, &a, 5, now);
    assert_eq!(closed.len(), 1, "a holds 3 > 2");
    assert_eq!(closed[0].reason, CloseReason::BufferFull);
    assert_eq!(closed[0].dead_letter, vec![3, 4, 5]);
    offer(&mut buffer, &b, 1, now);
    offer(&mut buffer, &b, 3, now + Duration::from_millis(1));
    offer(&mut buffer, &a, 7, now + Duration::from_millis(2));
    offer(&mut buffer, &a, 8, now + Duration::from_millis(3));
    let (_, closed) = offer(&mut buffer, &b, 5, now + Duration::from_millis(4));
    assert_eq!(
        closed.len(),
        1,
        "4 held in all > 3: the oldest gap (b's) closes"
    );
    assert_eq!(closed[0].key, b);
    assert_eq!(buffer.held(), 2);
}

#[test]
fn idle_keys_are_forgotten_unless_they_hold_or_are_busy() {
    let mut buffer = ReorderBuffer::new(limits(OnTimeout::DeadLetter));
    let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
    let start = Instant::now();
    offer(&mut buffer, &a, 1, start);
    offer(&mut buffer, &b, 1, start);
    offer(&mut buffer, &b, 3, start);
    offer(&mut buffer, &c, 1, start);
    let later = start + Duration::from_secs(60);
    offer(&mut buffer, &c, 2, later);
    // a is idle; b holds 3; c was seen at `later`.
    assert_eq!(buffer.evict_idle(later, |_| false), 1);
    assert_eq!(buffer.next_expected("a"), None);
    assert_eq!(buffer.next_expected("b"), Some(2));
    assert_eq!(buffer.next_expected("c"), Some(3));
    // A busy key stays whatever its age.
    assert_eq!(
        buffer.evict_idle(later + Duration::from_secs(60), |k| k == "c"),
        0
    );
    assert_eq!(buffer.keys(), 2);
    buffer.restore(a.clone(), 7, later);
    assert_eq!(buffer.next_expected("a"), Some(7));
    // A partition moving away takes its keys and their held events with it.
    let gone = buffer.forget(|k| k == "b");
    assert_eq!(gone, vec![3]);
    assert_eq!(buffer.held(), 0);
    assert_eq!(buffer.next_deadline(), None);
    assert_eq!(buffer.next_expected("b"), None);
}

#[test]
fn a_fixed_start_holds_the_first_event_until_its_predecessors_come() {
    let mut buffer = ReorderBuffer::new(ReorderLimits {
        start: Some(1),
        ..limits(OnTimeout::DeadLetter)
    });
    let key: Arc<str> = "k".into();
    let now = Instant::now();
    assert_eq!(
        offer(&mut buffer, &key, 2, now).0,
        Offered::Held { opened: true }
    );
    assert_eq!(
        offer(&mut buffer, &key, 1, now).0,
        Offered::Deliver(vec![1, 2])
    );
}

proptest! {
    /// Sequences 1..=n per key, shuffled within windows, come out complete and in order
    /// when no gap times out.
    #[test]
    fn shuffled_windows_come_out_in_order(
        n in 1u64..200,
        keys in 1usize..5,
        window in 1usize..50,
        seed in any::<u64>(),
    ) {
        let mut buffer = ReorderBuffer::new(ReorderLimits {
            start: Some(1),
            max_held_per_key: 10_000,
            max_held: 100_000,
            ..limits(OnTimeout::DeadLetter)
        });
        let names: Vec<Arc<str>> = (0..keys).map(|k| Arc::from(format!("k{k}"))).collect();
        let mut arrivals: Vec<(usize, u64)> = Vec::new();
        for (k, _) in names.iter().enumerate() {
            let mut seqs: Vec<u64> = (1..=n).collect();
            let mut state = seed ^ k as u64;
            for chunk in seqs.chunks_mut(window) {
                for i in (1..chunk.len()).rev() {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    chunk.swap(i, (state >> 33) as usize % (i + 1));
                }
            }
            arrivals.extend(seqs.into_iter().map(|s| (k, s)));
        }
        let now = Instant::now();
        let mut out: Vec<Vec<u64>> = vec![Vec::new(); keys];
        for (k, seq) in arrivals {
            let mut closed = Vec::new();
            if let Offered::Deliver(run) = buffer.offer(&names[k], seq, seq, now, &mut closed) {
                out[k].extend(run);
            }
            prop_assert!(closed.is_empty());
        }
        for got in out {
            prop_assert_eq!(got, (1..=n).collect::<Vec<_>>());
        }
        prop_assert_eq!(buffer.held(), 0);
    }

    /// Whatever arrives, in whatever order, and whenever gaps expire: what is delivered
    /// per key is strictly increasing, nothing is both delivered and dead-lettered, and
    /// the count of held events matches.
    #[test]
    fn never_out_of_order_whatever_arrives(
        ops in proptest::collection::vec((0usize..3, 1u64..40, 0u64..3), 1..300),
        release in any::<bool>(),
    ) {
        let policy = if release { OnTimeout::Release } else { OnTimeout::DeadLetter };
        let mut buffer = ReorderBuffer::new(ReorderLimits {
            max_held_per_key: 5,
            max_held: 8,
            ..limits(policy)
        });
        let names: Vec<Arc<str>> = (0..3).map(|k| Arc::from(format!("k{k}"))).collect();
        let start = Instant::now();
        let mut now = start;
        let mut last: Vec<Option<u64>> = vec![None; 3];
        let mut seen_out: Vec<std::collections::HashSet<u64>> = vec![Default::default(); 3];
        let mut check = |k: usize, seqs: &[u64], last: &mut Vec<Option<u64>>| -> Result<(), TestCaseError> {
            for &s in seqs {
                prop_assert!(last[k].is_none_or(|l| s > l), "key {k}: {s} after {:?}", last[k]);
                prop_assert!(seen_out[k].insert(s));
                last[k] = Some(s);
            }
            Ok(())
        };
        for (k, seq, advance) in ops {
            now += Duration::from_millis(400 * advance);
            for gap in buffer.expire(now) {
                let k = names.iter().position(|n| *n == gap.key).unwrap_or(0);
                check(k, &gap.release, &mut last)?;
                check(k, &gap.dead_letter, &mut last)?;
            }
            let mut closed = Vec::new();
            let offered = buffer.offer(&names[k], seq, seq, now, &mut closed);
            for gap in closed {
                let gk = names.iter().position(|n| *n == gap.key).unwrap_or(0);
                check(gk, &gap.release, &mut last)?;
                check(gk, &gap.dead_letter, &mut last)?;
            }
            if let Offered::Deliver(run) = offered {
                check(k, &run, &mut last)?;
            }
            prop_assert!(buffer.held() <= 8);
            let counted: usize = buffer.keys.values().map(|s| s.held.len()).sum();
            prop_assert_eq!(counted, buffer.held());
        }
    }
}
