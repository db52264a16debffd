//! What became of each event at each subscription (delivered, retried with the status,
//! dead-lettered, dropped, expired), handed to whoever keeps a record of it: the event
//! store's trace view. Recording never waits; the log decides what it keeps.

use std::sync::Arc;

/// What an attempt (or the end of an event's attempts) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The subscriber took it.
    Delivered,
    /// The attempt failed and another follows.
    Retried,
    /// Its attempts ran out and it went to the DLQ.
    DeadLettered,
    /// The subscriber refused it for good, or attempts ran out without a DLQ.
    Dropped,
    /// Its time to live passed before it was delivered.
    Expired,
}

impl Fate {
    /// The word stored for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Delivered => "delivered",
            Fate::Retried => "retried",
            Fate::DeadLettered => "dead_lettered",
            Fate::Dropped => "dropped",
            Fate::Expired => "expired",
        }
    }
}

/// One event's outcome at one subscription.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The subscription.
    pub subscription: Arc<str>,
    /// The partition the event is stored in.
    pub partition: Arc<str>,
    /// Its stream id there.
    pub id: String,
    /// Its `event_id`.
    pub event_id: String,
    /// What became of it.
    pub fate: Fate,
    /// The subscriber's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Which attempt (1 = first).
    pub attempt: u32,
    /// When, µs since the epoch.
    pub at_us: u64,
    /// From evrouter receiving the event to this outcome, µs.
    pub latency_us: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Where outcomes go.
pub trait OutcomeLog: Send + Sync + std::fmt::Debug {
    /// Whether this delivered event is recorded (successes may be sampled; failures are
    /// always offered).
    fn keep_delivered(&self) -> bool;
    /// Takes one outcome, without waiting.
    fn record(&self, settled: Settled);
}
