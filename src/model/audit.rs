//! One entry of the audit log: who did what to which resource, when, from where, and how
//! it ended.

use serde::{Deserialize, Serialize};

/// An audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id in the audit stream (a cursor for `since`); empty until stored.
    #[serde(default)]
    pub id: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The principal's name (`anonymous` when authentication is off; `-` when the caller
    /// had no valid token).
    pub principal: String,
    /// What: the method and the route, e.g. `DELETE /v1/subscriptions/{name}`.
    pub action: String,
    /// The resource: the path as called.
    pub target: String,
    /// The caller's address.
    pub address: String,
    /// The HTTP status it was answered.
    pub status: u16,
}
