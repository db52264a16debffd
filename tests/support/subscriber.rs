//! A real HTTP subscriber for delivery tests: records every request it gets and answers
//! as the test's rule says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::Value;

use super::eventually;

/// One event as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `event_id`.
    pub event_id: String,
    /// `data.order_id`.
    pub key: String,
    /// `data.seq`, when the test set one.
    pub seq: Option<u64>,
    /// `evr-attempt` header.
    pub attempt: u32,
    /// `evr-topic` header.
    pub topic: Option<String>,
    /// `traceparent` header.
    pub traceparent: Option<String>,
    /// `evr-replay: true` (a replay from the event store).
    pub replay: bool,
    /// Events in the request (1 in single mode).
    pub batch: usize,
    /// Whether the request's body was a JSON array (bulk mode), even of one event.
    pub in_array: bool,
    /// When the request arrived, on the subscriber's own counter of arrivals and answers.
    pub arrived: u64,
    /// When it was answered, on the same counter.
    pub answered: u64,
    /// The status it was answered with.
    pub status: u16,
}

/// How to answer: status and body, given the request's first event and its attempt.
pub type Rule = Arc<dyn Fn(&Received) -> (u16, String) + Send + Sync>;

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Received>>>,
    rule: Rule,
    /// Each answer waits a time drawn from this range.
    delay: Option<(Duration, Duration)>,
    clock: Arc<std::sync::atomic::AtomicU64>,
}

/// A subscriber listening on a free port.
pub struct Subscriber {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Answers 200 to everything.
    pub async fn ok() -> Self {
        Self::with_rule(Arc::new(|_| (200, String::new()))).await
    }

    /// Answers by `rule`.
    pub async fn with_rule(rule: Rule) -> Self {
        Self::start(rule, None).await
    }

    /// Answers by `rule` after `delay`.
    pub async fn start(rule: Rule, delay: Option<Duration>) -> Self {
        Self::start_with_delays(rule, delay.map(|d| (d, d))).await
    }

    /// Answers by `rule` after a delay drawn uniformly from `delays` (min, max).
    pub async fn start_with_delays(rule: Rule, delays: Option<(Duration, Duration)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            log: log.clone(),
            rule,
            delay: delays,
            clock: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let app = axum::Router::new()
            .route("/events", post(receive))
            .with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, log, task }
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("log").clone()
    }

    /// Events delivered with a 2xx... as decided by the rule; the test filters by attempt.
    pub fn count(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    /// Waits until at least `n` events arrived (or panics after `within`); returns the log.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait_until(within, &format!("{n} events"), |log| log.len() >= n)
            .await
    }

    /// Waits until `done` holds for the log (or panics after `within`, naming `what` was
    /// awaited); returns the log.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        eventually(within, async || {
            let log = self.log.lock().expect("log");
            if done(&log) {
                Ok(log.clone())
            } else {
                Err(format!(
                    "subscriber waiting for {what}, {} received",
                    log.len()
                ))
            }
        })
        .await
    }

    /// Stops listening (connections are refused afterwards).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_event(value: &Value, headers: &HeaderMap, batch: usize, in_array: bool) -> Received {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Received {
        event_id: value["event_id"].as_str().unwrap_or_default().to_string(),
        key: value["data"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        seq: value["data"]["seq"].as_u64(),
        attempt: header("evr-attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        topic: header("evr-topic"),
        traceparent: header("traceparent"),
        replay: header("evr-replay").as_deref() == Some("true"),
        batch,
        in_array,
        arrived: 0,
        answered: 0,
        status: 0,
    }
}

async fn receive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let tick = || {
        shared
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    };
    let arrived = tick();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut events: Vec<Received> = match &value {
        Value::Array(items) => items
            .iter()
            .map(|v| read_event(v, &headers, items.len(), true))
            .collect(),
        other => vec![read_event(other, &headers, 1, false)],
    };
    if let Some((min, max)) = shared.delay {
        let spread = max.saturating_sub(min).as_micros() as u64;
        let extra = if spread == 0 {
            0
        } else {
            fastrand::u64(0..=spread)
        };
        tokio::time::sleep(min + Duration::from_micros(extra)).await;
    }
    let (status, answer) = events
        .first()
        .map(|first| (shared.rule)(first))
        .unwrap_or((200, String::new()));
    let answered = tick();
    for event in &mut events {
        event.arrived = arrived;
        event.answered = answered;
        event.status = status;
    }
    shared.log.lock().expect("log").extend(events);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        answer,
    )
}

/// Events of `log` answered with success by a rule that fails `fails` first attempts:
/// keeps, per event id, the first record whose attempt is greater than `fails`.
pub fn successes(log: &[Received], fails: u32) -> Vec<Received> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for r in log {
        if r.attempt > fails && seen.insert(r.event_id.clone(), ()).is_none() {
            out.push(r.clone());
        }
    }
    out
}

/// Per key (`data.order_id`), the `data.seq` numbers in arrival order.
pub fn seqs_by_key(log: &[Received]) -> HashMap<String, Vec<u64>> {
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in log {
        by_key
            .entry(r.key.clone())
            .or_default()
            .push(r.seq.expect("seq"));
    }
    by_key
}

/// Asserts every one of `keys` keys got its events with `seq` 0, 1, 2 … `per_key - 1`,
/// with no gap, repeat or reordering.
pub fn assert_in_key_order(delivered: &[Received], keys: usize, per_key: u64) {
    let by_key = seqs_by_key(delivered);
    assert_eq!(by_key.len(), keys, "keys missing");
    for (key, seqs) in by_key {
        let expected: Vec<u64> = (0..per_key).collect();
        assert_eq!(seqs, expected, "key {key} out of order or incomplete");
    }
}

/// How many different events the log holds (redeliveries counted once).
pub fn distinct_events(log: &[Received]) -> usize {
    log.iter()
        .map(|r| r.event_id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Requests still being served when a newer event of their key had been answered 2xx (an
/// inversion: the subscriber finished the older event after the newer one), as `(key,
/// older seq, newer seq)`; the log must hold every request.
pub fn inversions(log: &[Received]) -> Vec<(String, u64, u64)> {
    // Per key: the newest seq answered 2xx, in answer order, to compare arrivals against.
    let mut answered: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for r in log {
        if (200..300).contains(&r.status) {
            if let Some(seq) = r.seq {
                answered.entry(&r.key).or_default().push((r.answered, seq));
            }
        }
    }
    let mut found = Vec::new();
    for r in log {
        let (Some(seq), Some(done)) = (r.seq, answered.get(r.key.as_str())) else {
            continue;
        };
        if let Some((_, newer)) = done
            .iter()
            .filter(|(at, newer)| *at < r.answered && *newer > seq)
            .max_by_key(|(_, newer)| *newer)
        {
            found.push((r.key.clone(), seq, *newer));
        }
    }
    found
}

/// How many different events were answered 2xx.
pub fn distinct_successes(log: &[Received]) -> usize {
    log.iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.event_id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}
