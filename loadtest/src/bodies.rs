//! Request bodies: realistic order events with keys spread over `keys` entities, built
//! once before the run so generating load costs little CPU.

use bytes::Bytes;
use serde_json::{json, Value};

/// One order event like the platform's own example.
pub fn order_event(n: u64, keys: usize) -> Value {
    let order = n % keys.max(1) as u64;
    json!({
        "event_id": format!("evt_order_{n}"),
        "event_type": "order.created",
        "timestamp": "2026-01-30T10:00:00Z",
        "version": "1.0",
        "data": {
            "order_id": format!("ord_{order}"),
            "customer_id": format!("cust_{}", order % 5000),
            "total_amount": 129.99,
            "currency": "USD",
            "items": [
                {"product_id": "prod_1001", "quantity": 2, "unit_price": 49.99},
                {"product_id": "prod_2002", "quantity": 1, "unit_price": 30.01}
            ],
            "shipping_address": {"city": "Hanoi", "country": "VN", "postal_code": "100000"}
        },
        "metadata": {
            "correlation_id": format!("corr_{n}"),
            "service": "order-service",
            "version": "1.4.2",
            "sequence": 1
        }
    })
}

/// `count` distinct request bodies of `batch` events each.
pub fn request_bodies(count: usize, batch: usize, keys: usize) -> Vec<Bytes> {
    (0..count)
        .map(|r| {
            let events: Vec<Value> = (0..batch)
                .map(|i| order_event((r * batch + i) as u64, keys))
                .collect();
            let body = if batch == 1 {
                serde_json::to_vec(&events[0])
            } else {
                serde_json::to_vec(&events)
            };
            Bytes::from(body.unwrap_or_default())
        })
        .collect()
}
