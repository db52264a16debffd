//! Logs: plain text, or one JSON object per line with `EVR_LOG_FORMAT=json`; and warnings
//! and errors rate-limited per call site, so that a flood of one warning (a subscriber
//! down, Redis unreachable) is summarised instead of drowning the rest: at most
//! [`BURST`] events of one call site per [`WINDOW`], then one line saying how many were
//! left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::model::sync::lock;

/// The environment variable that selects the format: `json`, or plain text otherwise.
pub const FORMAT_ENV: &str = crate::config::LOG_FORMAT_ENV;

/// Warnings (or errors) of one call site logged per window.
pub const BURST: u32 = 20;

/// The window of [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Site {
    /// Where the call site is, for the summary.
    at: String,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

/// A layer that vetoes warnings and errors of a call site beyond [`BURST`] per [`WINDOW`]
/// and counts them; [`WarningLimit::summaries`] says what was left out.
#[derive(Debug, Clone, Default)]
pub struct WarningLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

impl WarningLimit {
    /// A new limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call sites with events left out since the last call, with how many; counts reset.
    pub fn summaries(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for site in lock(&self.sites).values_mut() {
            if site.suppressed > 0 {
                out.push((site.at.clone(), site.suppressed));
                site.suppressed = 0;
            }
        }
        out.sort();
        out
    }

    /// Logs the summaries every [`WINDOW`] from a thread of its own, for the life of the
    /// process.
    pub fn report_forever(&self) {
        let limit = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-summaries".into())
            .spawn(move || loop {
                std::thread::sleep(WINDOW);
                for (at, suppressed) in limit.summaries() {
                    tracing::warn!(site = %at, suppressed, "similar warnings left out of the log in the last {} s", WINDOW.as_secs());
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "warnings will be rate-limited without summaries");
        }
    }

    fn allow(&self, event: &Event<'_>, now: Instant) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let mut sites = lock(&self.sites);
        let site = sites.entry(meta.callsite()).or_insert_with(|| Site {
            at: format!(
                "{}:{}",
                meta.file().unwrap_or(meta.target()),
                meta.line().unwrap_or(0)
            ),
            window_start: now,
            in_window: 0,
            suppressed: 0,
        });
        if now.duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.in_window = 0;
        }
        if site.in_window < BURST {
            site.in_window += 1;
            true
        } else {
            site.suppressed += 1;
            false
        }
    }
}

impl<S: Subscriber> Layer<S> for WarningLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.allow(event, Instant::now())
    }
}

/// Whether `EVR_LOG_FORMAT` asks for JSON lines.
pub fn json_wanted(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("json"))
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), for log lines.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Count(Arc<Mutex<u32>>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            *lock(&self.0) += 1;
        }
    }

    #[test]
    fn a_flood_of_one_warning_is_cut_at_the_burst_and_counted() {
        let limit = WarningLimit::new();
        let seen = Count::default();
        let subscriber = tracing_subscriber::registry()
            .with(limit.clone())
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..100 {
                tracing::warn!(n, "the same warning");
            }
            for n in 0..5 {
                tracing::info!(n, "information is never limited");
            }
            tracing::error!("another call site");
        });
        assert_eq!(*lock(&seen.0), BURST + 5 + 1);
        let summaries = limit.summaries();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0].1, 100 - u64::from(BURST));
        assert!(summaries[0].0.contains("logs.rs"), "{summaries:?}");
        assert!(limit.summaries().is_empty(), "counts reset");
    }

    #[test]
    fn trace_ids_and_the_format_switch() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_id(""), "");
        assert!(json_wanted(Some("JSON")));
        assert!(!json_wanted(Some("text")));
        assert!(!json_wanted(None));
    }
}
