//! Reading a batch publish body: today's scan (split into `RawValue`s, each event's
//! top-level fields read in place) against simd-json parsing the same body into a borrowed
//! tree and reading the same fields, for events of about 0.5, 2 and 12 KB in batches of 100.
//! What it decides is whether simd-json earns a place on the publish path
//! (docs/dependencies.md).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use evrouter::model::event::{Body, RawEvent};
use serde_json::Value;
use simd_json::prelude::*;

mod common;

/// An order event whose `data.notes` pads it to about `bytes`.
fn event(n: u64, bytes: usize) -> Value {
    let mut event = common::order_event(n);
    let size = serde_json::to_string(&event).map(|s| s.len()).unwrap_or(0) + 11;
    let want = bytes.saturating_sub(size);
    let pad = "lorem ipsum dolor sit am ".repeat(want / 24 + 1);
    event["data"]["notes"] = Value::String(pad[..want.min(pad.len())].into());
    event
}

fn batch(bytes: usize) -> Vec<u8> {
    serde_json::to_vec(&(0..100).map(|n| event(n, bytes)).collect::<Vec<_>>()).expect("json")
}

fn benches(c: &mut Criterion) {
    for (name, bytes) in [("0.5KB", 500), ("2KB", 2_000), ("12KB", 12_000)] {
        let body = batch(bytes);
        let mut group = c.benchmark_group(format!("batch_of_100_{name}"));
        group.throughput(Throughput::Elements(100));
        group.bench_function("rawvalue_scan", |b| {
            b.iter(|| {
                let text = std::str::from_utf8(&body).expect("utf-8");
                let Ok(Body::Many(events)) = Body::parse(text) else {
                    panic!("batch")
                };
                events
                    .iter()
                    .map(|raw| RawEvent::parse(raw).map(|e| e.raw.len()).unwrap_or(0))
                    .sum::<usize>()
            })
        });
        // simd-json parses in place: the body is copied first, as a request's bytes are
        // shared and immutable.
        group.bench_function("simd_json_borrowed", |b| {
            b.iter_batched(
                || body.clone(),
                |mut copy| {
                    let value = simd_json::to_borrowed_value(&mut copy).expect("json");
                    value
                        .as_array()
                        .map(|events| {
                            events
                                .iter()
                                .map(|e| {
                                    e.get("event_id")
                                        .and_then(|v| v.as_str())
                                        .map_or(0, str::len)
                                        + e.get("event_type")
                                            .and_then(|v| v.as_str())
                                            .map_or(0, str::len)
                                        + e.get("metadata").map_or(0, |_| 1)
                                })
                                .sum::<usize>()
                        })
                        .unwrap_or(0)
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(json_scan, benches);
criterion_main!(json_scan);
