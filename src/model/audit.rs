//! One entry of the audit log: who did what to which resource, when, from where, and how
//! it ended; or, for refused requests, how many of one caller and reason an interval saw.

use serde::{Deserialize, Serialize};

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// An admitted request that changed something or read the event store.
    #[default]
    Action,
    /// A refused request (401, 403), written in full: the first of its caller and reason in
    /// an interval.
    Refusal,
    /// The further refusals of one caller and reason in an interval, counted in one entry.
    Refusals,
}

/// An audited request, or a count of refused ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id in the audit log (a cursor for `after`); empty until stored. The ids of
    /// refusals start with `r`.
    #[serde(default)]
    pub id: String,
    /// What it records.
    #[serde(default)]
    pub kind: AuditKind,
    /// When, ms since the epoch (of a count: when its interval ended).
    pub at_ms: u64,
    /// The principal's name (`anonymous` when authentication is off; `-` when the caller
    /// had no valid token; `*` for the callers past the interval's limit).
    pub principal: String,
    /// What: the method and the path template, e.g. `DELETE /v1/subscriptions/{name}`, or the gRPC
    /// method (`gRPC dapr.proto.runtime.v1.Dapr/PublishEvent`); `*` for the callers past
    /// the interval's limit.
    pub action: String,
    /// The resource: the path as called (of a count: the first one counted).
    pub target: String,
    /// The caller's address (of a count: the first one counted).
    pub address: String,
    /// The status it was answered (the HTTP status; 401 or 403 for a gRPC refusal).
    pub status: u16,
    /// How many requests the entry stands for: 1, or the refusals a count holds.
    #[serde(default = "one")]
    pub count: u64,
    /// Of a count: when its first request came, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
}

fn one() -> u64 {
    1
}

impl Default for AuditEntry {
    fn default() -> Self {
        Self {
            id: String::new(),
            kind: AuditKind::Action,
            at_ms: 0,
            principal: String::new(),
            action: String::new(),
            target: String::new(),
            address: String::new(),
            status: 0,
            count: 1,
            from_ms: None,
        }
    }
}

impl AuditEntry {
    /// Whether it records refused requests (kept apart from the actions, and trimmed
    /// apart, so that refusals never push an action out).
    pub fn refused(&self) -> bool {
        self.kind != AuditKind::Action
    }
}
