//! The built-in subscriber: a webhook server that checks every delivery (duplicates, per-key
//! order, loss at the end) and measures end-to-end latency from each event's intended send
//! time to its arrival.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// What the sink has seen.
pub struct SinkState {
    seen: HashSet<u64>,
    next_seq: HashMap<String, u64>,
    /// Distinct events received.
    pub unique: u64,
    /// Events received again.
    pub duplicates: u64,
    /// Events that arrived after a later one of their key (first arrivals only).
    pub order_violations: u64,
    /// Deliveries that could not be read as the load generator's events.
    pub unexpected: u64,
    /// End-to-end latency (µs) of events sent in the measured window.
    pub latency: Histogram<u64>,
    /// Events sent in the measured window and received.
    pub measured: u64,
    measure_from_us: u64,
    measure_to_us: u64,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    event_id: &'a str,
    data: Data<'a>,
}

/// A CloudEvent whose `data` is one of the load generator's events.
#[derive(Deserialize)]
struct Cloud<'a> {
    #[serde(borrow)]
    data: Event<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    /// The entity key, `{prefix}/{connection}/{n}`: unique per stream and entity.
    #[serde(borrow)]
    lt_key: &'a str,
    seq: u64,
    sent_us: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl SinkState {
    /// Whether event number `id` has arrived.
    pub fn has(&self, id: u64) -> bool {
        self.seen.contains(&id)
    }

    fn record(&mut self, event: &Event<'_>, arrived_us: u64) {
        let id: u64 = event
            .event_id
            .rsplit('_')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return;
        }
        self.unique += 1;
        // Looked up by borrowed key; the key is copied only the first time it is seen.
        let next = match self.next_seq.get_mut(event.data.lt_key) {
            Some(next) => next,
            None => self
                .next_seq
                .entry(event.data.lt_key.to_string())
                .or_insert(0),
        };
        // An older event of a key after a newer one (a gap is not counted here: it is a
        // loss, found by id, or a publish that was not acknowledged).
        if event.data.seq < *next {
            self.order_violations += 1;
        }
        *next = (*next).max(event.data.seq + 1);
        if event.data.sent_us >= self.measure_from_us && event.data.sent_us < self.measure_to_us {
            self.measured += 1;
            self.latency
                .saturating_record(arrived_us.saturating_sub(event.data.sent_us).max(1));
        }
    }
}

/// A running sink.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub state: Arc<Mutex<SinkState>>,
}

impl Sink {
    /// Starts listening on a free loopback port, with room for `expected` distinct events:
    /// a set grown while the load runs would stop the generator's own threads for a
    /// rehash of every id seen (about 1 s at 30 million ids), a stall that would show as
    /// evrouter's.
    pub async fn start(expected: usize) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(SinkState {
            seen: HashSet::with_capacity(expected),
            next_seq: HashMap::new(),
            unique: 0,
            duplicates: 0,
            order_violations: 0,
            unexpected: 0,
            latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            measured: 0,
            measure_from_us: u64::MAX,
            measure_to_us: u64::MAX,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let discard = request.uri().path() == "/discard";
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            if !discard {
                                receive(&state, &body);
                            }
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state })
    }

    /// Keeps latency for events sent within [`from_us`, `to_us`) (wall clock, µs).
    pub fn set_window(&self, from_us: u64, to_us: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.measure_from_us = from_us;
            state.measure_to_us = to_us;
        }
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Distinct events received so far.
    pub fn unique(&self) -> u64 {
        self.state.lock().map(|s| s.unique).unwrap_or(0)
    }
}

fn receive(state: &Mutex<SinkState>, body: &[u8]) {
    let arrived = now_us();
    let trimmed = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let mut state = match state.lock() {
        Ok(state) => state,
        Err(poisoned) => poisoned.into_inner(),
    };
    // Events published through the Dapr API arrive as CloudEvents around the event: read
    // as such when the plain reading fails.
    if body.get(trimmed) == Some(&b'[') {
        let events = serde_json::from_slice::<Vec<Event>>(body).or_else(|_| {
            serde_json::from_slice::<Vec<Cloud>>(body)
                .map(|cloud| cloud.into_iter().map(|c| c.data).collect())
        });
        match events {
            Ok(events) => {
                for event in &events {
                    state.record(event, arrived);
                }
            }
            Err(_) => state.unexpected += 1,
        }
    } else {
        let event = serde_json::from_slice::<Event>(body)
            .or_else(|_| serde_json::from_slice::<Cloud>(body).map(|c| c.data));
        match event {
            Ok(event) => state.record(&event, arrived),
            Err(_) => state.unexpected += 1,
        }
    }
}
