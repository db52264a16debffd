//! Refused requests (401, 403, on HTTP and on the Dapr gRPC API) in the audit log, without
//! letting a flood fill it. Refusals are counted per caller (the principal when known,
//! else the address without its port) and reason (the status and the path template) over an
//! interval (`audit.refusal_interval`): the first of each is written in full at once, the
//! others are counted and written as one entry with their count when the interval ends.
//! At most `audit.refusal_callers` callers and reasons are kept apart in one interval; the
//! refusals of further ones are counted together (principal `*`), so cycling addresses or
//! tokens buys no more entries. A flood thus costs at most a few entries per interval, and
//! every refusal is still counted: in the log and in `evrouter_requests_refused_total`.
//! Refusals are stored apart from actions (see [`crate::store::audit`]), so none of this can
//! push an action out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::AppState;
use crate::config::AuditConfig;
use crate::model::audit::{AuditEntry, AuditKind};
use crate::model::clock::now_ms;
use crate::model::sync::lock;

/// One refused request.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// The principal, when the caller had a valid token (a 403).
    pub principal: Option<&'a str>,
    /// The method and the path template (or the gRPC method).
    pub action: &'a str,
    /// The path as called (or the gRPC method's path).
    pub target: &'a str,
    /// The caller's address.
    pub address: &'a str,
    /// 401 or 403.
    pub status: u16,
}

/// Who and why: the unit refusals are counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: String,
    status: u16,
    action: String,
}

/// The refusals of one key in an interval that were not written one by one.
#[derive(Debug, Default)]
struct Count {
    /// The first of them (its principal, target, address and time).
    first: Option<AuditEntry>,
    counted: u64,
}

impl Count {
    fn add(&mut self, entry: impl FnOnce() -> AuditEntry) {
        if self.first.is_none() {
            self.first = Some(entry());
        }
        self.counted += 1;
    }
}

/// The counts of the current interval.
#[derive(Debug, Default)]
struct Interval {
    keys: HashMap<Key, Count>,
    /// Past the limit of keys: by status.
    others: BTreeMap<u16, Count>,
}

/// The refusals of the current interval.
#[derive(Debug)]
pub struct Refusals {
    current: Mutex<Interval>,
    interval: Duration,
    max_callers: usize,
}

impl Refusals {
    /// Counts over `config.refusal_interval`, `config.refusal_callers` keys apart.
    pub fn new(config: &AuditConfig) -> Self {
        Self {
            current: Mutex::new(Interval::default()),
            interval: config.refusal_interval.get(),
            max_callers: config.refusal_callers.max(1),
        }
    }

    /// Counts `refused`, at `now_ms`; the entry to write at once when it is the first of
    /// its caller and reason in this interval.
    pub fn note(&self, refused: Refused<'_>, now_ms: u64) -> Option<AuditEntry> {
        let entry = || AuditEntry {
            kind: AuditKind::Refusal,
            at_ms: now_ms,
            principal: refused.principal.unwrap_or("-").to_string(),
            action: refused.action.to_string(),
            target: refused.target.to_string(),
            address: refused.address.to_string(),
            status: refused.status,
            ..AuditEntry::default()
        };
        let key = Key {
            caller: caller(refused.principal, refused.address),
            status: refused.status,
            action: refused.action.to_string(),
        };
        let mut current = lock(&self.current);
        if let Some(count) = current.keys.get_mut(&key) {
            count.add(entry);
            return None;
        }
        if current.keys.len() >= self.max_callers {
            current.others.entry(refused.status).or_default().add(entry);
            return None;
        }
        current.keys.insert(key, Count::default());
        Some(entry())
    }

    /// Ends the interval at `now_ms`: one entry per caller and reason with the refusals
    /// that were counted and not written, and one per status for the callers past the
    /// limit.
    pub fn close(&self, now_ms: u64) -> Vec<AuditEntry> {
        let ended = std::mem::take(&mut *lock(&self.current));
        let mut counts: Vec<AuditEntry> = ended
            .keys
            .into_values()
            .filter_map(|count| summary(count, now_ms))
            .collect();
        counts.sort_by_key(|e| e.from_ms);
        counts.extend(ended.others.into_values().filter_map(|count| {
            summary(count, now_ms).map(|entry| AuditEntry {
                principal: "*".into(),
                action: "*".into(),
                ..entry
            })
        }));
        counts
    }

    /// The length of an interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// The entry of a count, if anything was counted.
fn summary(count: Count, now_ms: u64) -> Option<AuditEntry> {
    let first = count.first?;
    Some(AuditEntry {
        kind: AuditKind::Refusals,
        at_ms: now_ms,
        count: count.counted,
        from_ms: Some(first.at_ms),
        ..first
    })
}

/// The caller of a refusal: the principal when known, else the address without its port
/// (every connection of one host is one caller).
fn caller(principal: Option<&str>, address: &str) -> String {
    match principal {
        Some(name) if name != "-" => format!("principal {name}"),
        _ => match address.parse::<SocketAddr>() {
            Ok(addr) => format!("address {}", addr.ip()),
            Err(_) => format!("address {address}"),
        },
    }
}

/// The reason label of a refusal in the metrics.
fn reason(status: u16) -> &'static str {
    match status {
        401 => "unauthenticated",
        403 => "forbidden",
        _ => "other",
    }
}

/// Records a refused request through `api` (`http` or `grpc`): counted in the metrics,
/// and written to the audit log at once when it is the first of its caller and reason in
/// this interval.
pub async fn refused(app: &AppState, refused: Refused<'_>, api: &'static str) {
    app.metrics.refused(reason(refused.status), api);
    if let Some(entry) = app.refusals.note(refused, now_ms()) {
        write(app, &[entry]).await;
    }
}

/// Writes `entries`; a failure is logged (the requests have been answered already).
pub(super) async fn write(app: &AppState, entries: &[AuditEntry]) {
    match tokio::time::timeout(app.ready_timeout, app.audit.append_all(entries)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, entries = entries.len(), "audit entries not written")
        }
        Err(_) => tracing::warn!(entries = entries.len(), "audit entries not written in time"),
    }
}

/// Writes the counts of the interval that ends now (at shutdown, the last one).
pub async fn flush(app: &AppState) {
    let counts = app.refusals.close(now_ms());
    write(app, &counts).await;
}

/// Ends an interval every `audit.refusal_interval` and writes its counts, until aborted.
pub fn spawn_flusher(app: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(app.refusals.interval());
        tick.tick().await;
        loop {
            tick.tick().await;
            flush(&app).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(max_callers: usize) -> Refusals {
        Refusals::new(&AuditConfig {
            refusal_callers: max_callers,
            ..AuditConfig::default()
        })
    }

    fn wrong_token(address: &str) -> Refused<'_> {
        Refused {
            principal: None,
            action: "GET /v1/subscriptions",
            target: "/v1/subscriptions",
            address,
            status: 401,
        }
    }

    #[test]
    fn the_first_of_a_caller_is_written_and_the_rest_counted_in_one_entry() {
        let r = refusals(10);
        // Four connections of one host: one caller.
        let written: Vec<_> = (0..1000u64)
            .filter_map(|n| {
                let address = format!("10.0.0.1:{}", 40000 + n % 4);
                r.note(wrong_token(&address), n)
            })
            .collect();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].kind, AuditKind::Refusal);
        assert_eq!(written[0].principal, "-");
        let counts = r.close(5000);
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].kind, AuditKind::Refusals);
        assert_eq!(counts[0].count, 999);
        assert_eq!((counts[0].from_ms, counts[0].at_ms), (Some(1), 5000));
        // A new interval starts afresh; nothing counted, nothing to write.
        assert!(r.note(wrong_token("10.0.0.1:1"), 6000).is_some());
        assert!(r.close(7000).is_empty());
    }

    #[test]
    fn callers_past_the_limit_are_counted_together() {
        let r = refusals(3);
        let mut written = 0;
        for n in 0..500u64 {
            // An attacker cycling addresses: each request from another one.
            let address = format!("10.0.{}.{}:80", n / 250, n % 250);
            written += usize::from(r.note(wrong_token(&address), n).is_some());
        }
        // A principal refused for a right, and another reason of the same principal.
        let forbidden = |action| Refused {
            principal: Some("shipping"),
            action,
            target: "/v1/dlq/x",
            address: "10.1.0.1:5",
            status: 403,
        };
        written += usize::from(r.note(forbidden("DELETE /v1/dlq/{name}"), 600).is_some());
        assert_eq!(written, 3, "only the first three keys are written in full");
        let counts = r.close(1000);
        let others: Vec<_> = counts.iter().filter(|e| e.principal == "*").collect();
        assert_eq!(others.len(), 2, "one count per status: {counts:?}");
        let total: u64 = counts.iter().map(|e| e.count).sum::<u64>() + written as u64;
        assert_eq!(total, 501, "every refusal counted once");
    }

    #[test]
    fn a_principal_is_one_caller_from_any_address() {
        let r = refusals(10);
        let forbidden = |address| Refused {
            principal: Some("shipping"),
            action: "DELETE /v1/dlq/{name}",
            target: "/v1/dlq/x",
            address,
            status: 403,
        };
        assert!(r.note(forbidden("10.0.0.1:1"), 1).is_some());
        assert!(r.note(forbidden("10.0.0.2:1"), 2).is_none());
        assert_eq!(r.close(3)[0].address, "10.0.0.2:1");
    }
}
