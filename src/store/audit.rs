//! The audit log: two Redis streams, one of actions (`{prefix}:audit`: every admitted
//! change and every read of the event store) and one of refusals (`{prefix}:audit:refused`:
//! refused requests, sampled and counted per caller and reason by the ingress). Each is
//! trimmed by age (a year by default) and by its own length, so that a flood of refused
//! requests can neither grow the log without bound nor push a single action out of it.
//! Reads merge the two in time order; the ids of refusals carry an `r` in front, so that
//! a cursor names its stream.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use crate::model::audit::{AuditEntry, AuditKind};

/// The prefix of the ids of refusal entries.
const REFUSED: char = 'r';

/// The audit streams and their bounds.
#[derive(Clone)]
pub struct AuditLog {
    conn: ConnectionManager,
    actions: String,
    refusals: String,
    retention: Duration,
    max_actions: u64,
    max_refusals: u64,
}

impl AuditLog {
    /// The log under `prefix`, keeping `retention`, at most about `max_actions` actions and
    /// `max_refusals` refusal entries.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        retention: Duration,
        (max_actions, max_refusals): (u64, u64),
    ) -> Self {
        Self {
            conn,
            actions: format!("{prefix}:audit"),
            refusals: format!("{prefix}:audit:refused"),
            retention,
            max_actions,
            max_refusals,
        }
    }

    /// Appends `entries` to their streams, trimming each by the retention and its length.
    pub async fn append_all(&self, entries: &[AuditEntry]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for entry in entries {
            let (key, max) = if entry.refused() {
                (&self.refusals, self.max_refusals)
            } else {
                (&self.actions, self.max_actions)
            };
            let oldest = entry
                .at_ms
                .saturating_sub(self.retention.as_millis() as u64);
            pipe.cmd("XADD")
                .arg(key)
                .arg("MINID")
                .arg("~")
                .arg(oldest)
                .arg("*")
                .arg("at_ms")
                .arg(entry.at_ms)
                .arg("kind")
                .arg(kind_name(entry.kind))
                .arg("principal")
                .arg(&entry.principal)
                .arg("action")
                .arg(&entry.action)
                .arg("target")
                .arg(&entry.target)
                .arg("address")
                .arg(&entry.address)
                .arg("status")
                .arg(entry.status)
                .arg("count")
                .arg(entry.count)
                .arg("from_ms")
                .arg(entry.from_ms.map(|ms| ms.to_string()).unwrap_or_default())
                .ignore()
                .cmd("XTRIM")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max)
                .ignore();
        }
        pipe.query_async(&mut conn).await
    }

    /// Appends one entry.
    pub async fn append(&self, entry: &AuditEntry) -> redis::RedisResult<()> {
        self.append_all(std::slice::from_ref(entry)).await
    }

    /// Up to `limit` entries after `after` (an entry id) or from `since_ms`, oldest first,
    /// of `principal` when given: actions and refusals merged in time order (an action
    /// before a refusal of the same id).
    pub async fn read(
        &self,
        since_ms: u64,
        after: Option<&str>,
        principal: Option<&str>,
        limit: usize,
    ) -> redis::RedisResult<Vec<AuditEntry>> {
        // Where each stream starts: after an action's id, the refusal of the same id is
        // still to come; after a refusal's, the action of the same id was already given.
        let (actions_from, refusals_from) = match after {
            Some(id) => match id.strip_prefix(REFUSED) {
                Some(id) => (format!("({id}"), format!("({id}")),
                None => (format!("({id}"), id.to_string()),
            },
            None => (since_ms.to_string(), since_ms.to_string()),
        };
        let actions = self
            .read_stream(&self.actions, actions_from, principal, limit, "")
            .await?;
        let refusals = self
            .read_stream(&self.refusals, refusals_from, principal, limit, "r")
            .await?;
        let mut merged: Vec<(StreamId, AuditEntry)> = actions
            .into_iter()
            .map(|e| (StreamId::of(&e.id, 0), e))
            .chain(refusals.into_iter().map(|e| {
                (
                    StreamId::of(e.id.strip_prefix(REFUSED).unwrap_or(&e.id), 1),
                    e,
                )
            }))
            .collect();
        merged.sort_by_key(|(id, _)| *id);
        merged.truncate(limit);
        Ok(merged.into_iter().map(|(_, e)| e).collect())
    }

    /// Up to `limit` entries of one stream from `from` (an XRANGE start), ids prefixed by
    /// `prefix`.
    async fn read_stream(
        &self,
        key: &str,
        mut from: String,
        principal: Option<&str>,
        limit: usize,
        prefix: &str,
    ) -> redis::RedisResult<Vec<AuditEntry>> {
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        // Filtering by principal may skip entries: read pages until enough are found.
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(100))
                .query_async(&mut conn)
                .await?;
            let Some(last) = page.ids.last() else {
                break;
            };
            from = format!("({}", last.id);
            let full = page.ids.len() >= limit.max(100);
            for entry in page.ids {
                let text = |name: &str| entry.get::<String>(name).unwrap_or_default();
                let status = text("status").parse().unwrap_or(0);
                let record = AuditEntry {
                    id: format!("{prefix}{}", entry.id),
                    kind: kind_of(&text("kind"), status),
                    // When it was recorded, by Redis's clock: one clock for every
                    // instance, and the log's order (entries made at once by two
                    // requests may reach Redis in the other order).
                    at_ms: super::bounds::id_ms(&entry.id)
                        .unwrap_or_else(|| text("at_ms").parse().unwrap_or(0)),
                    principal: text("principal"),
                    action: text("action"),
                    target: text("target"),
                    address: text("address"),
                    status,
                    count: text("count").parse().unwrap_or(1),
                    from_ms: text("from_ms").parse().ok(),
                };
                if principal.is_none_or(|p| p == record.principal) {
                    found.push(record);
                    if found.len() >= limit {
                        return Ok(found);
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(found)
    }
}

/// A stream entry id as numbers, with the stream (0 actions, 1 refusals) after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64, u8);

impl StreamId {
    fn of(id: &str, stream: u8) -> Self {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Self(ms.parse().unwrap_or(0), seq.parse().unwrap_or(0), stream)
    }
}

fn kind_name(kind: AuditKind) -> &'static str {
    match kind {
        AuditKind::Action => "action",
        AuditKind::Refusal => "refusal",
        AuditKind::Refusals => "refusals",
    }
}

/// The kind stored as `name`; of an entry written before kinds existed, by its status.
fn kind_of(name: &str, status: u16) -> AuditKind {
    match name {
        "refusal" => AuditKind::Refusal,
        "refusals" => AuditKind::Refusals,
        "action" => AuditKind::Action,
        _ if matches!(status, 401 | 403) => AuditKind::Refusal,
        _ => AuditKind::Action,
    }
}
