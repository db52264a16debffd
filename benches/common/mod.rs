//! What the benches share: the platform's example order event.

use serde_json::{json, Value};

/// Order event `n`, keyed over 10,000 orders.
pub fn order_event(n: u64) -> Value {
    json!({
        "event_id": format!("evt_order_{n}"),
        "event_type": "order.created",
        "timestamp": "2026-01-30T10:00:00Z",
        "version": "1.0",
        "data": {
            "order_id": format!("ord_{}", n % 10_000),
            "customer_id": format!("cust_{}", n % 5000),
            "total_amount": 129.99, "currency": "USD",
            "items": [
                {"product_id": "prod_1001", "quantity": 2, "unit_price": 49.99},
                {"product_id": "prod_2002", "quantity": 1, "unit_price": 30.01}
            ],
            "shipping_address": {"city": "Hanoi", "country": "VN", "postal_code": "100000"}
        },
        "metadata": {"correlation_id": format!("corr_{n}"), "service": "order-service",
                     "version": "1.4.2", "sequence": 1}
    })
}
