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

/// Bodies made at send time for end-to-end runs: every event has a unique id, a key owned
/// by one connection (so that per-key publish order is that connection's send order), a
/// per-key sequence number and its intended send time, which the sink reads back.
pub struct LiveBodies {
    connection: u64,
    keys: u64,
    next_event: u64,
    seqs: Vec<u64>,
    /// Events handed out so far.
    pub events: u64,
}

impl LiveBodies {
    /// Bodies for connection `connection`, spreading events over `keys` keys of its own.
    pub fn new(connection: usize, keys: usize) -> Self {
        let keys = keys.max(1);
        Self {
            connection: connection as u64,
            keys: keys as u64,
            next_event: 0,
            seqs: vec![0; keys],
            events: 0,
        }
    }

    /// A request body of `batch` events (an object when `batch` is 1).
    pub fn next(&mut self, batch: usize, sent_us: u64) -> Bytes {
        use std::io::Write;
        let mut out = Vec::with_capacity(batch * 560 + 2);
        if batch > 1 {
            out.push(b'[');
        }
        for i in 0..batch {
            if i > 0 {
                out.push(b',');
            }
            let n = self.next_event;
            self.next_event += 1;
            let k = (n % self.keys) as usize;
            let seq = self.seqs[k];
            self.seqs[k] += 1;
            let id = self.connection * 1_000_000_000_000 + n;
            let _ = write!(
                out,
                r#"{{"event_id":"evt_order_{id}","event_type":"order.created","timestamp":"2026-01-30T10:00:00Z","version":"1.0","data":{{"order_id":"ord_{c}_{k}","seq":{seq},"sent_us":{sent_us},"customer_id":"cust_{k}","total_amount":129.99,"currency":"USD","items":[{{"product_id":"prod_1001","quantity":2,"unit_price":49.99}},{{"product_id":"prod_2002","quantity":1,"unit_price":30.01}}]}},"metadata":{{"correlation_id":"corr_{id}","service":"order-service","version":"1.4.2"}}}}"#,
                c = self.connection
            );
        }
        if batch > 1 {
            out.push(b']');
        }
        self.events += batch as u64;
        Bytes::from(out)
    }
}
