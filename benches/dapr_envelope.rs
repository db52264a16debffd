//! The Dapr API's work per event: a bulk entry (the platform's order event as JSON data,
//! already read with the bulk body) made into the envelope evrouter stores, a CloudEvent
//! around it, with a new trace and continuing the caller's; a single publish of the same
//! body (its nesting measured, its JSON scanned); a bulk body of 100 such entries read
//! (and, apart, the walk over its whole nesting that reading it used to begin with); and a
//! new `traceparent` written.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use evrouter::config::DaprConfig;
use evrouter::model::cloudevent::Body;
use evrouter::publish::dapr::bulk::parse_bulk;
use evrouter::publish::dapr::{Caller, DaprPubsubs, Depth, Metadata, Route};
use serde_json::value::RawValue;

mod common;

fn benches(c: &mut Criterion) {
    let api = DaprPubsubs::new(&DaprConfig::default());
    let event = serde_json::to_string(&common::order_event(7)).expect("json");
    let raw: &RawValue = serde_json::from_str(&event).expect("raw JSON");
    let target = api.target("pubsub", "order.created").expect("target");
    let route = Route {
        pubsub: "pubsub",
        topic: "order.created",
        target: &target,
    };
    let metadata = Metadata {
        partition_key: Some("ord_7".into()),
        ..Metadata::default()
    };
    let fresh = Caller {
        app_id: Some("checkout".into()),
        ..Caller::default()
    };
    let continued = Caller {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..fresh.clone()
    };
    let stored = |body: Body<'_>, caller: &Caller, depth: Depth| {
        api.envelope(route, body, "application/json", &metadata, caller, depth)
            .map(|(envelope, _)| envelope.payload.len())
            .unwrap_or(0)
    };
    let mut group = c.benchmark_group("dapr");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bulk_entry_new_trace", |b| {
        b.iter(|| stored(Body::Json(raw), &fresh, Depth::Checked))
    });
    group.bench_function("bulk_entry_their_trace", |b| {
        b.iter(|| stored(Body::Json(raw), &continued, Depth::Checked))
    });
    group.bench_function("single_publish", |b| {
        b.iter(|| stored(Body::Bytes(event.as_bytes()), &fresh, Depth::Limit(64)))
    });
    group.finish();
    // A bulk body as the Dapr SDKs send it: an entry id, a content type, the partition key.
    let entries: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"entryId":"{i}","contentType":"application/json","metadata":{{"partitionKey":"ord_{i}"}},"event":{}}}"#,
                serde_json::to_string(&common::order_event(i)).expect("json")
            )
        })
        .collect();
    let body = format!("[{}]", entries.join(","));
    let mut group = c.benchmark_group("dapr");
    group.throughput(Throughput::Elements(100));
    group.bench_function("bulk_body_of_100", |b| {
        b.iter(|| parse_bulk(body.as_bytes(), 64).map_or(0, |entries| entries.len()))
    });
    group.bench_function("bulk_body_of_100_whole_depth_walk", |b| {
        b.iter(|| evrouter::model::event::json_depth(body.as_bytes(), 66))
    });
    group.finish();
    c.bench_function("trace/new_traceparent", |b| {
        b.iter(evrouter::model::trace::new_traceparent)
    });
}

criterion_group!(dapr_envelope, benches);
criterion_main!(dapr_envelope);
