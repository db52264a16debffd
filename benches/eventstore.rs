//! What the event store's choices cost per event on the CPU: reading a stored envelope into
//! a row (the archive's work beside PostgreSQL), finding an event's data subjects, and —
//! for the crypto-shredding design that was weighed against redaction — sealing and
//! opening a payload with AES-256-GCM under a per-subject key.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use evrouter::config::SubjectConfig;
use evrouter::eventstore::rows::{Row, COLUMNS};
use evrouter::eventstore::subjects::Subjects;
use evrouter::model::envelope::{aligned_copy, Envelope, PayloadFormat, Stored};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde_json::json;

/// The same event with its keys in the order of the platform's schema.
const SEED_ORDER: &str = r#"{"event_id":"evt_order_42","event_type":"order.created","timestamp":"2026-11-30T10:00:00Z","version":"1.0","data":{"order_id":"ord_42","customer_id":"cust_7","total_amount":99.5,"items":[{"product_id":"prod_1","quantity":2},{"product_id":"prod_9","quantity":1}],"shipping_address":{"street":"1 Main St","city":"Springfield","zip":"12345"}},"metadata":{"correlation_id":"corr_42","service":"order-service","version":"1.0.0"}}"#;

fn envelope() -> Envelope {
    let payload = json!({
        "event_id": "evt_order_42", "event_type": "order.created",
        "timestamp": "2026-11-30T10:00:00Z", "version": "1.0",
        "data": {"order_id": "ord_42", "customer_id": "cust_7", "total_amount": 99.5,
                 "items": [{"product_id": "prod_1", "quantity": 2}, {"product_id": "prod_9", "quantity": 1}],
                 "shipping_address": {"street": "1 Main St", "city": "Springfield", "zip": "12345"}},
        "metadata": {"correlation_id": "corr_42", "service": "order-service", "version": "1.0.0"}
    });
    Envelope {
        event_id: "evt_order_42".into(),
        topic: "order.created".into(),
        event_type: "order.created".into(),
        key: "ord_42".into(),
        sequence: None,
        received_us: 1_796_000_000_000_000,
        service: "order-service".into(),
        correlation_id: "corr_42".into(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        tracestate: None,
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
        format: PayloadFormat::Event,
        content_type: None,
        expires_us: None,
    }
}

fn archive(c: &mut Criterion) {
    let subjects = Subjects::new(&[SubjectConfig {
        topics: vec!["order.>".into()],
        pointers: vec!["/data/customer_id".into()],
    }]);
    let none = Subjects::new(&[]);
    let envelope = envelope();
    // The stored entry as read, laid out to be checked in place.
    let entry = aligned_copy(&envelope.encode());
    let stored = Stored::open(&entry).expect("entry");
    let mut group = c.benchmark_group("eventstore");
    group.throughput(Throughput::Elements(1));
    group.bench_function("row_without_subjects", |b| {
        b.iter(|| {
            let fields = stored.fields().expect("fields");
            Row::new(fields, "evr:{order.3}", "1796000000000-7", &none).redis_seq
        })
    });
    group.bench_function("row_with_subjects", |b| {
        b.iter(|| {
            let fields = stored.fields().expect("fields");
            Row::new(fields, "evr:{order.3}", "1796000000000-7", &subjects)
                .subjects
                .len()
        })
    });
    // What the archive does per event beside PostgreSQL: the stored entry (as read)
    // checked and read where it lies, its row made and written as the binary COPY's
    // values. The payload's keys sorted (`timestamp` last), then in the platform's
    // order (`timestamp` before `data`).
    let seed_order = Envelope {
        payload: SEED_ORDER.as_bytes().to_vec(),
        ..envelope.clone()
    };
    let seed_entry = aligned_copy(&seed_order.encode());
    // The same event published through the Dapr API: a CloudEvent as evrouter builds it,
    // its `time` before its `data`.
    let cloudevent = Envelope {
        payload: format!(
            r#"{{"specversion":"1.0","id":"0b8f2c4e-1c1a-4a57-9d1e-5d7c1f0e2a42","source":"order-service","type":"com.dapr.event.sent","datacontenttype":"application/json","time":"2026-11-30T10:00:00.000000Z","topic":"order.created","pubsubname":"pubsub","traceid":"{tp}","traceparent":"{tp}","tracestate":"","data":{SEED_ORDER}}}"#,
            tp = envelope.traceparent
        )
        .into_bytes(),
        format: PayloadFormat::CloudEvent,
        ..envelope.clone()
    };
    let cloudevent_entry = aligned_copy(&cloudevent.encode());
    for (name, entry) in [
        ("entry_to_copy_row", &entry),
        ("entry_to_copy_row_seed_order", &seed_entry),
        ("entry_to_copy_row_cloudevent", &cloudevent_entry),
    ] {
        group.bench_function(name, |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                let stored = Stored::open(entry).expect("entry");
                let fields = stored.fields().expect("fields");
                let row = Row::new(fields, "evr:{order.3}", "1796000000000-7", &none);
                for (value, (_, ty)) in row.values().iter().zip(COLUMNS) {
                    let _ = value.to_sql_checked(ty, &mut out);
                }
                out.len()
            })
        });
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
    let payload = envelope.payload.clone();
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("aes256gcm_seal_payload", |b| {
        b.iter(|| {
            let mut sealed = payload.clone();
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key([1u8; 12]),
                Aad::empty(),
                &mut sealed,
            )
            .map(|()| sealed.len())
        })
    });
    let mut sealed = payload.clone();
    let _ = key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([1u8; 12]),
        Aad::empty(),
        &mut sealed,
    );
    group.bench_function("aes256gcm_open_payload", |b| {
        b.iter(|| {
            let mut opened = sealed.clone();
            key.open_in_place(
                Nonce::assume_unique_for_key([1u8; 12]),
                Aad::empty(),
                &mut opened,
            )
            .map(|plain| plain.len())
        })
    });
    group.finish();
}

criterion_group!(benches, archive);
criterion_main!(benches);
