//! The per-event CPU work of a publish, without HTTP or Redis: parse, validate, place and
//! encode. Throughput is reported in events per second.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use evrouter::catalog::StreamCatalog;
use evrouter::config::Config;
use evrouter::model::envelope::Envelope;
use evrouter::model::event::{Body, RawEvent, RawMetadata};
use evrouter::publish::{prepare_event, PublishContext};
use evrouter::schema::SchemaRegistry;

mod common;
use common::order_event as event;

fn batch_body(size: u64) -> String {
    serde_json::to_string(&(0..size).map(event).collect::<Vec<_>>()).expect("json")
}

fn benches(c: &mut Criterion) {
    let config = Config::default();
    let schemas = SchemaRegistry::load(&config.validation).expect("schemas");
    let catalog = StreamCatalog::new(&config);
    let placement = catalog.placement("order.created").expect("placement");
    let context = PublishContext::default();
    let tracer = evrouter::traces::Tracer::off();
    let body = batch_body(100);

    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(100));
    group.bench_function("parse_batch_of_100", |b| {
        b.iter(|| {
            let Ok(Body::Many(events)) = Body::parse(&body) else {
                panic!("batch")
            };
            events
                .iter()
                .map(|raw| RawEvent::parse(raw).map(|e| e.raw.len()).unwrap_or(0))
                .sum::<usize>()
        })
    });
    group.bench_function("validate_batch_of_100", |b| {
        let Ok(Body::Many(events)) = Body::parse(&body) else {
            panic!("batch")
        };
        let parsed: Vec<RawEvent> = events
            .iter()
            .map(|raw| RawEvent::parse(raw).expect("event"))
            .collect();
        b.iter(|| {
            parsed
                .iter()
                .map(|e| schemas.validate(e, &RawMetadata::parse(e.metadata)).len())
                .sum::<usize>()
        })
    });
    group.bench_function("prepare_batch_of_100", |b| {
        b.iter(|| {
            let Ok(Body::Many(events)) = Body::parse(&body) else {
                panic!("batch")
            };
            events
                .iter()
                .map(|raw| {
                    prepare_event(
                        &placement,
                        &schemas,
                        "order.created",
                        raw,
                        &context,
                        1,
                        &tracer,
                    )
                    .map(|p| p.value.len())
                    .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    let prepared = {
        let Ok(Body::Many(events)) = Body::parse(&body) else {
            panic!("batch")
        };
        prepare_event(
            &placement,
            &schemas,
            "order.created",
            events[0],
            &context,
            1,
            &tracer,
        )
        .expect("valid")
    };
    let envelope = Envelope::decode(&prepared.value).expect("decode");
    group.bench_function("encode", |b| b.iter(|| envelope.encode().len()));
    group.bench_function("decode", |b| {
        b.iter_batched(
            || prepared.value.clone(),
            |bytes| Envelope::decode(&bytes).map(|e| e.payload.len()),
            BatchSize::SmallInput,
        )
    });
    // What delivery does per read entry: the short fields, the payload found in place.
    group.bench_function("view", |b| {
        b.iter_batched(
            || prepared.value.clone(),
            |bytes| Envelope::view(&bytes).map(|v| v.payload.len()),
            BatchSize::SmallInput,
        )
    });
    // A read entry as dispatch takes it: its own copy out of the read buffer, then the view.
    group.bench_function("copy_and_view_read_entry", |b| {
        b.iter(|| {
            let raw = evrouter::model::envelope::aligned_copy(&prepared.value);
            Envelope::view(&raw).map(|v| v.payload.len())
        })
    });
    group.finish();

    // What signing adds to each webhook request: HMAC-SHA256 over a bulk body of 100
    // events (the batch body above, as a subscriber gets it).
    let mut group = c.benchmark_group("signature");
    group.throughput(Throughput::Elements(100));
    let secrets = evrouter::model::signing::SigningSecrets::generate();
    let bulk = body.as_bytes().to_vec();
    group.bench_function("bulk_body_of_100", |b| {
        b.iter(|| {
            evrouter::webhook::signature::sign(
                &secrets,
                "evr:{order.1}/1-0+100",
                1_800_000_000_000,
                &bulk,
            )
            .signature
            .len()
        })
    });
    group.finish();
}

criterion_group!(publish, benches);
criterion_main!(publish);
