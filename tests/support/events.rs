//! Events the tests publish.

use serde_json::{json, Value};

use super::RouterApi;

/// A valid platform event about `order_id`.
pub fn order_event(n: u64, order_id: &str) -> Value {
    json!({
        "event_id": format!("evt_order_{n}"),
        "event_type": "order.created",
        "timestamp": "2026-01-30T10:00:00Z",
        "version": "1.0",
        "data": {"order_id": order_id, "customer_id": "cust_1", "total_amount": 99.5,
                 "items": [{"product_id": "prod_1", "quantity": 2}]},
        "metadata": {"correlation_id": format!("corr_{n}"), "service": "order-service", "version": "1.0.0"}
    })
}

/// An order event with a per-key sequence number in `data.seq`.
pub fn keyed_event(n: u64, order_id: &str, seq: u64) -> Value {
    let mut event = order_event(n, order_id);
    event["data"]["seq"] = json!(seq);
    event
}

/// Publishes `per_key` events for each of `keys` keys (`ord_0` …) in batches of up to 500,
/// `data.seq` counting up per key; returns how many were published.
pub async fn publish_keyed(
    router: &impl RouterApi,
    topic: &str,
    keys: usize,
    per_key: u64,
) -> usize {
    let mut n = 0u64;
    let mut batch = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            batch.push(keyed_event(n, &format!("ord_{k}"), seq));
            n += 1;
            if batch.len() == 500 {
                router
                    .publish_ok(topic, &Value::Array(std::mem::take(&mut batch)))
                    .await;
            }
        }
    }
    if !batch.is_empty() {
        router.publish_ok(topic, &Value::Array(batch)).await;
    }
    n as usize
}
