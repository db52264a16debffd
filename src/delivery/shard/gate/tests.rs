//! The sequence gate's tests: keys read back before their first decision, gaps held,
//! filled and closed (on tokio's paused clock), rewinds, forgetting and idle sweeps.

use super::*;
use crate::delivery::shard::tests::delivery;
use crate::metrics::Metrics;
use crate::model::subscription::{tests::spec, Ordering, SubscriptionSpec};
use tokio::time::{advance, sleep_until};

const PARTITION: &str = "evr:{order.0}";
const LANE: &str = "evr:{order.0}\u{1f}order-1";

fn gate_of(
    edit: impl FnOnce(&mut SubscriptionSpec),
    rewinds: i64,
) -> (SequenceGate, Arc<SubscriptionStats>) {
    let mut spec = spec();
    spec.ordering = Ordering::Sequence;
    spec.reorder.timeout_ms = 1000;
    edit(&mut spec);
    let mut sub = Subscription::new(spec).expect("valid spec");
    sub.rewinds = rewinds;
    let stats = Arc::new(SubscriptionStats::new(&Metrics::default(), "shipping"));
    let gate = SequenceGate::new(&sub, reorder_limits(&sub, 1), stats.clone());
    (gate, stats)
}

fn gate() -> (SequenceGate, Arc<SubscriptionStats>) {
    gate_of(|_| {}, 0)
}

/// Now on tokio's clock, which paused time moves.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lane() -> Arc<str> {
    Arc::from(LANE)
}

fn show(steps: Vec<Step>) -> Vec<String> {
    let seq = |d: &Delivery| d.sequence.map_or("-".to_string(), |s| s.to_string());
    steps
        .into_iter()
        .map(|step| match step {
            Step::Enqueue(d) => format!("enqueue {}", seq(&d)),
            Step::Settle(d, None) => format!("ack {}", seq(&d)),
            Step::Settle(d, Some((reason, note))) => {
                format!("dead-letter {} {reason}: {note}", seq(&d))
            }
            Step::AdvanceIfIdle(lane) => format!("advance {}", lane.replace('\u{1f}', " ")),
        })
        .collect()
}

/// Offers `seqs` of the lane, whose key is unknown yet, and answers the read of its stored
/// number with `next` (and whether the generation before a rewind had one), as the shard
/// does: what the gate lets through then.
fn offer_unknown(
    gate: &mut SequenceGate,
    seqs: &[u64],
    next: Option<u64>,
    rewound: bool,
) -> Vec<String> {
    for seq in seqs {
        assert!(gate.offer(delivery(LANE, Some(*seq)), now()).is_empty());
    }
    let batch = gate.next_restore_batch().expect("the key is to be read");
    assert_eq!(batch.lanes, [lane()]);
    gate.restore_finished();
    let waiting = gate
        .take_restored(lane(), next, rewound, now())
        .expect("events wait for the key");
    let mut steps = Vec::new();
    for delivery in waiting {
        gate.start_key(&delivery, now());
        steps.extend(gate.offer(delivery, now()));
    }
    show(steps)
}

fn offer(gate: &mut SequenceGate, seq: u64) -> Vec<String> {
    show(gate.offer(delivery(LANE, Some(seq)), now()))
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(AtomicOrdering::Relaxed)
}

#[test]
fn a_new_keys_events_wait_for_its_stored_number_then_go_in_order() {
    let (mut gate, _) = gate();
    assert!(gate.offer(delivery(LANE, Some(7)), now()).is_empty());
    assert!(gate.offer(delivery(LANE, Some(8)), now()).is_empty());
    let batch = gate.next_restore_batch().expect("the key is to be read");
    assert_eq!(batch.lanes, [lane()]);
    assert_eq!(
        batch.keys,
        [sequence_state_key(PARTITION, "shipping", 0, "order-1")]
    );
    assert!(!batch.after_acks);
    // One read at a time.
    assert!(gate.next_restore_batch().is_none());
    gate.restore_finished();
    let waiting = gate
        .take_restored(lane(), Some(7), false, now())
        .expect("waiting");
    let mut steps = Vec::new();
    for delivery in waiting {
        gate.start_key(&delivery, now());
        steps.extend(gate.offer(delivery, now()));
    }
    assert_eq!(show(steps), ["enqueue 7", "enqueue 8"]);
    // A key whose partition went away meanwhile has nothing waiting.
    assert!(gate.take_restored(lane(), Some(1), false, now()).is_none());
}

#[test]
fn a_key_with_nothing_stored_starts_where_the_subscription_says() {
    let (mut first_seen, _) = gate();
    assert_eq!(
        offer_unknown(&mut first_seen, &[5], None, false),
        ["enqueue 5"]
    );
    let (mut at_one, stats) = gate_of(|spec| spec.reorder.start = ReorderStart::At(1), 0);
    assert!(offer_unknown(&mut at_one, &[5], None, false).is_empty());
    assert_eq!(count(&stats.sequence.gaps_opened), 1);
    assert_eq!(count(&stats.sequence.held), 1);
}

#[test]
fn a_gap_holds_the_events_after_it_until_it_fills() {
    let (mut gate, stats) = gate();
    assert_eq!(
        offer_unknown(&mut gate, &[1], Some(1), false),
        ["enqueue 1"]
    );
    assert!(offer(&mut gate, 3).is_empty());
    assert_eq!(count(&stats.sequence.gaps_opened), 1);
    assert_eq!(count(&stats.sequence.held), 1);
    assert_eq!(offer(&mut gate, 2), ["enqueue 2", "enqueue 3"]);
    assert_eq!(count(&stats.sequence.gaps_filled), 1);
    assert_eq!(count(&stats.sequence.held), 0);
    assert_eq!(offer(&mut gate, 2), ["ack 2"]);
    assert_eq!(count(&stats.sequence.duplicates), 1);
}

#[test]
fn an_event_without_a_number_goes_straight_to_its_lane() {
    let (mut gate, stats) = gate();
    let steps = gate.offer(delivery(LANE, None), now());
    assert_eq!(show(steps), ["enqueue -"]);
    assert_eq!(count(&stats.sequence.unsequenced), 1);
    assert!(gate.next_restore_batch().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_gap_open_past_its_timeout_is_dead_lettered_and_a_straggler_after_it() {
    let (mut gate, stats) = gate();
    let start = now();
    assert_eq!(
        offer_unknown(&mut gate, &[1], Some(1), false),
        ["enqueue 1"]
    );
    assert!(offer(&mut gate, 3).is_empty());
    let deadline = gate.next_deadline().expect("a gap is open");
    assert_eq!(deadline, start + Duration::from_secs(1));
    advance(Duration::from_millis(999)).await;
    assert!(gate.expire(now()).is_empty());
    sleep_until(deadline.into()).await;
    assert_eq!(
        show(gate.expire(now())),
        [
            "dead-letter 3 sequence_gap_timeout: missing sequence numbers 2",
            "advance evr:{order.0} order-1",
        ]
    );
    assert_eq!(gate.next_deadline(), None);
    assert_eq!(count(&stats.sequence.gaps_timed_out), 1);
    assert_eq!(count(&stats.sequence.held), 0);
    // The key's next number moved past the gap.
    match gate.advance_if_idle(&lane(), now()) {
        Some(AckOp::Advance {
            partition,
            key,
            next,
        }) => {
            assert_eq!(&*partition, PARTITION);
            assert_eq!(key, sequence_state_key(PARTITION, "shipping", 0, "order-1"));
            assert_eq!(next, 4);
        }
        other => panic!("expected an advance, got {other:?}"),
    }
    assert_eq!(
        offer(&mut gate, 2),
        ["dead-letter 2 late_after_gap: sequence 2 arrived after its gap was skipped"]
    );
    assert_eq!(count(&stats.sequence.late_after_gap), 1);
}

#[tokio::test(start_paused = true)]
async fn a_released_gap_lets_the_held_events_go_and_counts_what_it_skipped() {
    let (mut gate, stats) = gate_of(|spec| spec.reorder.on_timeout = GapPolicy::Release, 0);
    assert_eq!(
        offer_unknown(&mut gate, &[1], Some(1), false),
        ["enqueue 1"]
    );
    assert!(offer(&mut gate, 4).is_empty());
    assert!(offer(&mut gate, 5).is_empty());
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        show(gate.expire(now())),
        ["enqueue 4", "enqueue 5", "advance evr:{order.0} order-1"]
    );
    assert_eq!(count(&stats.sequence.skipped), 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_dlq_a_timed_out_gaps_events_are_dropped() {
    let (mut gate, stats) = gate_of(|spec| spec.dead_letter = false, 0);
    assert_eq!(
        offer_unknown(&mut gate, &[1], Some(1), false),
        ["enqueue 1"]
    );
    assert!(offer(&mut gate, 3).is_empty());
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        show(gate.expire(now())),
        ["ack 3", "advance evr:{order.0} order-1"]
    );
    assert_eq!(count(&stats.dropped), 1);
    assert_eq!(offer(&mut gate, 2), ["ack 2"]);
}

#[test]
fn after_a_rewind_a_key_known_before_starts_at_its_first_rewound_event() {
    let (mut gate, _) = gate_of(|_| {}, 2);
    assert!(gate.offer(delivery(LANE, Some(12)), now()).is_empty());
    let batch = gate.next_restore_batch().expect("to read");
    assert_eq!(
        batch.keys,
        [
            sequence_state_key(PARTITION, "shipping", 2, "order-1"),
            sequence_state_key(PARTITION, "shipping", 1, "order-1"),
        ]
    );
    // Unknown before the rewind too, the key starts at the first event seen.
    let (mut fresh, _) = gate_of(|_| {}, 2);
    assert_eq!(
        offer_unknown(&mut fresh, &[12, 10], None, false),
        ["enqueue 12", "ack 10"]
    );
    // Known before it, at the first event rewound (10, then 11 is still to come).
    let (mut rewound, _) = gate_of(|_| {}, 2);
    assert_eq!(
        offer_unknown(&mut rewound, &[12, 10], None, true),
        ["enqueue 10"]
    );
}

#[test]
fn a_forgotten_key_hands_back_its_held_events_and_is_read_again_after_the_acks() {
    let (mut gate, _) = gate();
    assert_eq!(
        offer_unknown(&mut gate, &[1], Some(1), false),
        ["enqueue 1"]
    );
    assert!(offer(&mut gate, 3).is_empty());
    let dropped = gate.forget_lane(&lane());
    assert_eq!(
        dropped.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        [Some(3)]
    );
    assert!(gate.advance_if_idle(&lane(), now()).is_none());
    assert!(offer(&mut gate, 2).is_empty());
    let batch = gate.next_restore_batch().expect("read again");
    assert!(batch.after_acks);
}

#[test]
fn renewals_that_change_no_partition_keep_every_key() {
    let (mut gate, _) = gate();
    assert_eq!(
        offer_unknown(&mut gate, &[1], Some(1), false),
        ["enqueue 1"]
    );
    assert!(offer(&mut gate, 3).is_empty());
    let dropped = gate.on_ownership_change(Arc::new(Owned::default()), |_| false);
    assert!(dropped.is_empty());
    assert_eq!(offer(&mut gate, 2), ["enqueue 2", "enqueue 3"]);
}

#[test]
fn a_sweep_forgets_idle_keys_but_not_busy_ones() {
    let (mut gate, _) = gate();
    let start = Instant::now();
    let busy: Arc<str> = Arc::from("evr:{order.0}\u{1f}order-2");
    gate.buffer.restore(lane(), 1, start);
    gate.buffer.restore(busy.clone(), 1, start);
    let later = start + IDLE_KEY + Duration::from_secs(1);
    // Not due yet: nothing is swept.
    gate.sweep_if_due(later, |_| false);
    assert!(gate.buffer.next_expected(LANE).is_some());
    gate.offers_since_sweep = SWEEP_EVERY;
    gate.sweep_if_due(later, |key| key == &*busy);
    assert_eq!(gate.offers_since_sweep, 0);
    assert!(gate.buffer.next_expected(LANE).is_none());
    assert_eq!(gate.buffer.next_expected(&busy), Some(1));
}

#[test]
fn a_lane_going_on_records_the_number_after_its_last_done_event() {
    let (gate, _) = gate_of(|_| {}, 3);
    match gate.advance_past(&lane(), 41) {
        AckOp::Advance { key, next, .. } => {
            assert_eq!(key, sequence_state_key(PARTITION, "shipping", 3, "order-1"));
            assert_eq!(next, 42);
        }
        other => panic!("expected an advance, got {other:?}"),
    }
}

#[test]
fn each_shard_holds_its_share_of_at_most_half_the_read_ahead() {
    let mut spec = spec();
    spec.ordering = Ordering::Sequence;
    spec.max_in_flight = 1000;
    spec.reorder.max_held = 100_000;
    let sub = Subscription::new(spec).expect("valid spec");
    assert_eq!(reorder_limits(&sub, 4).max_held, 125);
    assert_eq!(reorder_limits(&sub, 0).max_held, 500);
    assert_eq!(reorder_limits(&sub, 10_000).max_held, 1);
}
