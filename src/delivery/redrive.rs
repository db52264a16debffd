//! DLQ redrive: dead letters sent through the subscription's subscriber again, in DLQ order,
//! each removed once it is delivered (or the subscriber drops it).

use redis::aio::ConnectionManager;
use serde::Serialize;

use super::resend::send_once;
use super::transport::{Outcome, Subscriber};
use crate::store::dlq;

/// What a redrive did.
#[derive(Debug, Default, Serialize)]
pub struct RedriveReport {
    /// Delivered (or dropped by the subscriber) and removed from the DLQ.
    #[serde(rename = "replayed")]
    pub redriven: u64,
    /// Failed again; still in the DLQ.
    pub failed: u64,
}

/// Entries read from a DLQ at a time.
const PAGE: usize = 500;

/// Redrives the dead letters in `keys` (all, or only the cursors in `only`) to `subscriber`,
/// one event a request.
pub async fn redrive(
    conn: &mut ConnectionManager,
    keys: &[String],
    subscriber: &dyn Subscriber,
    single: bool,
    only: Option<&[String]>,
) -> redis::RedisResult<RedriveReport> {
    let mut report = RedriveReport::default();
    for (index, key) in keys.iter().enumerate() {
        let mut from = "-".to_string();
        loop {
            let entries = dlq::page(conn, key, &from, PAGE).await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            from = format!("({last}");
            for (id, raw) in entries {
                let cursor = format!("{index}-{id}");
                if only.is_some_and(|ids| !ids.contains(&cursor)) {
                    continue;
                }
                match send_once(subscriber, key, &id, raw, single, false).await {
                    Some(Outcome::Delivered | Outcome::Drop(_)) => {
                        dlq::delete(conn, key, &id).await?;
                        report.redriven += 1;
                    }
                    Some(Outcome::Retry(_)) => report.failed += 1,
                    // Unreadable: left where it is, as listing skips it.
                    None => {}
                }
            }
        }
    }
    Ok(report)
}
