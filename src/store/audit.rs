//! The audit log: one Redis stream (`{prefix}:audit`) of every admin and subscription
//! change and every refused request, trimmed by age (a year by default) and by length, so
//! that a flood of refused requests cannot grow it without bound.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use crate::model::audit::AuditEntry;

/// The audit stream and its bounds.
#[derive(Clone)]
pub struct AuditLog {
    conn: ConnectionManager,
    key: String,
    retention: Duration,
    max_entries: u64,
}

impl AuditLog {
    /// The log under `prefix`, keeping `retention` and at most about `max_entries`.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        retention: Duration,
        max_entries: u64,
    ) -> Self {
        Self {
            conn,
            key: format!("{prefix}:audit"),
            retention,
            max_entries,
        }
    }

    /// Appends `entry`, trimming what is older than the retention or beyond the length.
    pub async fn append(&self, entry: &AuditEntry) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let oldest = entry
            .at_ms
            .saturating_sub(self.retention.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&self.key)
            .arg("MINID")
            .arg("~")
            .arg(oldest)
            .arg("*")
            .arg("at_ms")
            .arg(entry.at_ms)
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
            .ignore()
            .cmd("XTRIM")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_entries)
            .ignore();
        pipe.query_async(&mut conn).await
    }

    /// Up to `limit` entries after `after` (an entry id) or from `since_ms`, oldest first,
    /// of `principal` when given.
    pub async fn read(
        &self,
        since_ms: u64,
        after: Option<&str>,
        principal: Option<&str>,
        limit: usize,
    ) -> redis::RedisResult<Vec<AuditEntry>> {
        let mut conn = self.conn.clone();
        let mut from = match after {
            Some(id) => format!("({id}"),
            None => since_ms.to_string(),
        };
        let mut found = Vec::new();
        // Filtering by principal may skip entries: read pages until enough are found.
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.key)
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
                let record = AuditEntry {
                    id: entry.id.clone(),
                    at_ms: text("at_ms").parse().unwrap_or(0),
                    principal: text("principal"),
                    action: text("action"),
                    target: text("target"),
                    address: text("address"),
                    status: text("status").parse().unwrap_or(0),
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
