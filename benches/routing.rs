//! The per-event CPU work of routing and delivery, without Redis or HTTP: topic pattern
//! matching, key extraction and partitioning, per-key lane dispatch, and the reorder buffer
//! of `ordering = "sequence"`. Throughput is reported in elements (events or matches) per
//! second.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use evrouter::catalog::{partition_of, StreamCatalog};
use evrouter::config::Config;
use evrouter::delivery::lanes::{lane_name, Lanes};
use evrouter::delivery::reorder::{Offered, OnTimeout, ReorderBuffer, ReorderLimits};
use evrouter::model::event::{Body, RawEvent, RawMetadata};
use evrouter::model::pattern::TopicPattern;
use serde_json::json;

const TOPICS: &[&str] = &[
    "order.created",
    "order.paid",
    "inventory.reserved",
    "payment.captured",
    "customer.profile.updated",
    "search.query.performed",
    "catalog.price.changed",
    "service.health.check",
];

fn patterns(c: &mut Criterion) {
    let mut group = c.benchmark_group("pattern");
    group.throughput(Throughput::Elements(TOPICS.len() as u64));
    for (name, pattern) in [
        ("exact", "order.created"),
        ("star", "order.*"),
        ("rest", "order.>"),
        ("regex", r"re:^payment\.(captured|refunded)$"),
    ] {
        let compiled = TopicPattern::parse(pattern).expect("pattern");
        group.bench_function(name, |b| {
            b.iter(|| TOPICS.iter().filter(|t| compiled.matches(t)).count())
        });
    }
    group.finish();
}

fn keys_and_partitions(c: &mut Criterion) {
    let config = Config::default();
    let catalog = StreamCatalog::new(&config);
    let placement = catalog.placement("order.created").expect("placement");
    let events: Vec<_> = (0..100)
        .map(|n| {
            json!({"event_id": format!("evt_order_{n}"), "event_type": "order.created",
                   "data": {"order_id": format!("ord_{n}"), "items": [{"sku": "a"}, {"sku": "b"}], "total": 5},
                   "metadata": {"correlation_id": "c", "service": "s", "version": "1", "sequence": n}})
        })
        .collect();
    let body = serde_json::to_string(&events).expect("json");
    let Ok(Body::Many(raws)) = Body::parse(&body) else {
        panic!("batch")
    };
    let parsed: Vec<RawEvent> = raws
        .iter()
        .map(|r| RawEvent::parse(r).expect("event"))
        .collect();
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(100));
    group.bench_function("route_lookup", |b| {
        b.iter(|| {
            (0..100)
                .filter(|_| catalog.placement("order.created").is_ok())
                .count()
        })
    });
    group.bench_function("key_and_partition", |b| {
        b.iter(|| {
            parsed
                .iter()
                .map(|event| {
                    let metadata = RawMetadata::parse(event.metadata);
                    let key = placement.key(event, &metadata, "evt_x_1");
                    partition_of(&key, 16)
                })
                .sum::<u32>()
        })
    });
    group.finish();
}

fn lanes(c: &mut Criterion) {
    let keys: Vec<Arc<str>> = (0..10_000).map(|k| Arc::from(format!("ord_{k}"))).collect();
    let mut group = c.benchmark_group("lanes");
    // Each event read is given its lane's name: its partition and its key.
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("name_10k", |b| {
        let mut buf = String::new();
        b.iter(|| {
            for key in &keys {
                std::hint::black_box(lane_name(&mut buf, "evr:{order.12}", '\u{1f}', key));
            }
        })
    });
    // How the name was made before: formatted, then copied into its shared allocation.
    group.bench_function("name_10k_by_format", |b| {
        b.iter(|| {
            for key in &keys {
                let name: Arc<str> = Arc::from(format!("{}\u{1f}{}", "evr:{order.12}", key));
                std::hint::black_box(name);
            }
        })
    });
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("push_then_drain_100k_over_10k_keys", |b| {
        b.iter(|| {
            let mut lanes: Lanes<u64> = Lanes::default();
            let mut ready = Vec::with_capacity(10_000);
            for n in 0..100_000u64 {
                let key = &keys[(n % 10_000) as usize];
                if lanes.push(key.clone(), n) {
                    ready.push(key.clone());
                }
            }
            let mut done = 0;
            while let Some(key) = ready.pop() {
                if let Some((_, more)) = lanes.pop(&key) {
                    done += 1;
                    if more {
                        ready.push(key);
                    }
                }
            }
            done
        })
    });
    group.finish();
}

fn reorder(c: &mut Criterion) {
    const KEYS: usize = 1000;
    const PER_KEY: u64 = 20;
    let limits = ReorderLimits {
        timeout: std::time::Duration::from_secs(300),
        on_timeout: OnTimeout::DeadLetter,
        max_held_per_key: 1000,
        max_held: 100_000,
        start: Some(1),
    };
    let keys: Vec<Arc<str>> = (0..KEYS).map(|k| Arc::from(format!("ord_{k}"))).collect();
    // Arrivals in order, and with each key's pairs swapped (2,1,4,3…): every other event
    // is held, then released by the next.
    let in_order: Vec<(usize, u64)> = (1..=PER_KEY)
        .flat_map(|s| (0..KEYS).map(move |k| (k, s)))
        .collect();
    let swapped: Vec<(usize, u64)> = (1..=PER_KEY)
        .flat_map(|s| (0..KEYS).map(move |k| (k, if s % 2 == 1 { s + 1 } else { s - 1 })))
        .collect();
    let mut group = c.benchmark_group("reorder");
    group.throughput(Throughput::Elements(KEYS as u64 * PER_KEY));
    for (name, arrivals) in [("in_order", &in_order), ("pairs_swapped", &swapped)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buffer = ReorderBuffer::new(limits.clone());
                let now = std::time::Instant::now();
                let mut closed = Vec::new();
                let mut delivered = 0usize;
                for &(k, seq) in arrivals.iter() {
                    if let Offered::Deliver(run) =
                        buffer.offer(&keys[k], seq, seq, now, &mut closed)
                    {
                        delivered += run.len();
                    }
                }
                assert_eq!(delivered, KEYS * PER_KEY as usize);
                delivered
            })
        });
    }
    group.finish();
}

criterion_group!(routing, patterns, keys_and_partitions, lanes, reorder);
criterion_main!(routing);
