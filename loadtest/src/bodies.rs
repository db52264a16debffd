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

/// The platform's topics and their documented rates per hour.
pub const SEED_MIX: &[(&str, u32)] = &[
    ("order.created", 5000),
    ("order.confirmed", 4800),
    ("order.paid", 4500),
    ("order.shipped", 4200),
    ("order.delivered", 4000),
    ("inventory.reserved", 8000),
    ("inventory.allocated", 4500),
    ("inventory.picked", 4200),
    ("inventory.restocked", 1000),
    ("payment.authorized", 5000),
    ("payment.captured", 4500),
    ("payment.refunded", 200),
    ("payment.failed", 100),
    ("customer.registered", 500),
    ("customer.verified", 450),
    ("customer.profile.updated", 200),
    ("catalog.product.created", 50),
    ("catalog.product.updated", 200),
    ("catalog.price.changed", 1000),
    ("search.index.updated", 1500),
    ("search.query.performed", 10000),
    ("service.health.check", 1140),
    ("service.deployment", 10),
    ("service.error", 50),
    ("analytics.report.generated", 24),
    ("analytics.alert.triggered", 10),
];

/// The field that names a domain's entity (evrouter's default key rules use the same).
fn key_field(domain: &str) -> (&'static str, &'static str) {
    match domain {
        "order" => ("order_id", "ord"),
        "inventory" => ("product_id", "prod"),
        "payment" => ("order_id", "ord"),
        "customer" => ("customer_id", "cust"),
        "catalog" => ("product_id", "prod"),
        "search" => ("query_id", "qry"),
        "service" => ("service", "svc"),
        "analytics" => ("report_id", "rpt"),
        _ => ("entity_id", "ent"),
    }
}

/// Which topic each request goes to.
pub struct Mix {
    topics: Vec<String>,
    cumulative: Vec<u64>,
}

impl Mix {
    /// The seed platform's mix, scaled: each topic's share of requests is its share of
    /// the documented hourly volume.
    pub fn seed() -> Self {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(SEED_MIX.len());
        for (_, rate) in SEED_MIX {
            total += u64::from(*rate);
            cumulative.push(total);
        }
        Self {
            topics: SEED_MIX.iter().map(|(t, _)| (*t).to_string()).collect(),
            cumulative,
        }
    }

    /// Every request to one topic.
    pub fn single(topic: &str) -> Self {
        Self {
            topics: vec![topic.to_string()],
            cumulative: vec![1],
        }
    }

    /// Every topic, for the subscription.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Draws a topic.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> &str {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let draw = rng.u64(0..total);
        let index = self.cumulative.partition_point(|c| *c <= draw);
        &self.topics[index.min(self.topics.len() - 1)]
    }
}

/// Bodies made at send time: every event has a unique id, a key owned by one connection
/// (so that per-key publish order is that connection's send order), a per-key sequence
/// number (also as `metadata.sequence`, so an entity's life is numbered) and its intended
/// send time, which the sink reads back.
pub struct LiveBodies {
    connection: u64,
    keys: u64,
    next_event: u64,
    /// Next sequence number per (domain, key): order is per stream, and payment events
    /// share their order's key but live in the payment stream.
    seqs: std::collections::HashMap<(u64, u64), u64>,
    /// Padding written into every event's `data`.
    pad: String,
}

impl LiveBodies {
    /// Bodies for connection `connection`, spreading events over `keys` keys of its own.
    pub fn new(connection: usize, keys: usize) -> Self {
        Self {
            connection: connection as u64,
            keys: keys.max(1) as u64,
            next_event: 0,
            seqs: std::collections::HashMap::new(),
            pad: String::new(),
        }
    }

    /// The same, with `bytes` of padding in every event's `data`.
    pub fn padded(mut self, bytes: usize) -> Self {
        self.pad = "x".repeat(bytes);
        self
    }

    /// The numeric id of the next event (its `event_id` ends in it).
    pub fn next_id(&self) -> u64 {
        self.connection * 1_000_000_000_000 + self.next_event
    }

    /// A request body of `batch` events of `topic` (an object when `batch` is 1), and the
    /// last event's entity key. With `dapr`, a batch is a Dapr bulk publish body whose
    /// entries carry their key as `partitionKey`.
    pub fn next(&mut self, topic: &str, batch: usize, sent_us: u64, dapr: bool) -> (Bytes, String) {
        use std::io::Write;
        let domain = topic.split('.').next().unwrap_or(topic);
        let (field, prefix) = key_field(domain);
        let mut out = Vec::with_capacity(batch * (700 + self.pad.len()) + 2);
        let mut last_key = String::new();
        if batch > 1 {
            out.push(b'[');
        }
        for i in 0..batch {
            if i > 0 {
                out.push(b',');
            }
            let bulk_entry = dapr && batch > 1;
            let n = self.next_event;
            self.next_event += 1;
            let k = n % self.keys;
            let domain_id = xxhash_rust::xxh3::xxh3_64(domain.as_bytes());
            let seq_slot = self.seqs.entry((domain_id, k)).or_insert(0);
            let seq = *seq_slot;
            *seq_slot += 1;
            let id = self.connection * 1_000_000_000_000 + n;
            let c = self.connection;
            last_key = format!("{prefix}_{c}_{k}");
            if bulk_entry {
                let _ = write!(
                    out,
                    r#"{{"entryId":"{i}","contentType":"application/json","metadata":{{"partitionKey":"{last_key}"}},"event":"#
                );
            }
            let _ = write!(
                out,
                r#"{{"event_id":"evt_{domain}_{id}","event_type":"{topic}","timestamp":"2026-01-30T10:00:00Z","version":"1.0","data":{{"{field}":"{prefix}_{c}_{k}","lt_key":"{domain}/{c}/{k}","seq":{seq},"sent_us":{sent_us},"#
            );
            let _ = match domain {
                "order" => write!(
                    out,
                    r#""customer_id":"cust_{k}","total_amount":129.99,"currency":"USD","items":[{{"product_id":"prod_1001","quantity":2,"unit_price":49.99}},{{"product_id":"prod_2002","quantity":1,"unit_price":30.01}}]"#
                ),
                "inventory" => write!(
                    out,
                    r#""warehouse_id":"wh_hn_01","quantity":3,"reserved_for":"ord_{c}_{k}","available_after":117"#
                ),
                "payment" => write!(
                    out,
                    r#""payment_id":"pay_{id}","amount":129.99,"currency":"USD","method":"card","gateway":"stripe""#
                ),
                _ => write!(
                    out,
                    r#""source":"loadtest","detail":"{topic} for {prefix}_{c}_{k}""#
                ),
            };
            if !self.pad.is_empty() {
                let _ = write!(out, r#","pad":"{}""#, self.pad);
            }
            let _ = write!(
                out,
                r#"}},"metadata":{{"correlation_id":"corr_{id}","service":"{domain}-service","version":"1.4.2","sequence":{}}}}}"#,
                seq + 1
            );
            if bulk_entry {
                out.push(b'}');
            }
        }
        if batch > 1 {
            out.push(b']');
        }
        (Bytes::from(out), last_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_mix_follows_the_documented_shares() {
        let mix = Mix::seed();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..200_000 {
            *counts.entry(mix.pick(&mut rng).to_string()).or_insert(0u32) += 1;
        }
        let total: u32 = SEED_MIX.iter().map(|(_, r)| r).sum();
        let share = |topic: &str| f64::from(counts.get(topic).copied().unwrap_or(0)) / 200_000.0;
        let expected = |rate: u32| f64::from(rate) / f64::from(total);
        assert!((share("search.query.performed") - expected(10000)).abs() < 0.01);
        assert!((share("order.created") - expected(5000)).abs() < 0.01);
        assert!(share("analytics.alert.triggered") < 0.002);
    }

    #[test]
    fn live_bodies_are_valid_events_with_increasing_sequences() {
        let mut bodies = LiveBodies::new(3, 2);
        let (body, _) = bodies.next("inventory.reserved", 4, 42, false);
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
        assert_eq!(events.len(), 4);
        assert_eq!(events[0]["data"]["product_id"], "prod_3_0");
        assert_eq!(events[2]["data"]["seq"], 1);
        assert_eq!(events[2]["metadata"]["sequence"], 2);
        assert_eq!(events[3]["data"]["sent_us"], 42);
        let (single, _) = bodies.next("order.created", 1, 1, false);
        let event: serde_json::Value = serde_json::from_slice(&single).expect("json");
        assert_eq!(event["data"]["order_id"], "ord_3_0");
        assert_eq!(event["event_type"], "order.created");
    }

    #[test]
    fn padding_grows_each_event_by_its_length() {
        let (plain, _) = LiveBodies::new(1, 2).next("order.created", 1, 0, false);
        let (padded, _) = LiveBodies::new(1, 2)
            .padded(1000)
            .next("order.created", 1, 0, false);
        assert_eq!(padded.len(), plain.len() + 1000 + r#","pad":"""#.len());
        let event: serde_json::Value = serde_json::from_slice(&padded).expect("JSON");
        assert_eq!(event["data"]["pad"].as_str().map(str::len), Some(1000));
    }

    #[test]
    fn dapr_bulk_bodies_carry_each_key_as_partition_key() {
        let mut bodies = LiveBodies::new(1, 2);
        let (body, last) = bodies.next("order.paid", 3, 5, true);
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["entryId"], "0");
        assert_eq!(entries[0]["contentType"], "application/json");
        assert_eq!(entries[1]["metadata"]["partitionKey"], "ord_1_1");
        assert_eq!(entries[1]["event"]["data"]["order_id"], "ord_1_1");
        assert_eq!(last, "ord_1_0");
    }
}
