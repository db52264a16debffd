//! Every metric evrouter exposes, in one place: its name, type, labels and help text.
//! Counters, histograms and the families of `/metrics` are registered from these entries
//! and from nothing else; a test below checks that `docs/operations.md` lists each one.

use super::Unit;

/// What kind of metric an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; exposed with a `_total` suffix.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution; its recorded values are in `Unit`.
    Histogram(Unit),
}

/// One metric.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    /// Name, without the `_total` of a counter.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Label names, in the order their values are given.
    pub labels: &'static [&'static str],
    /// Help text.
    pub help: &'static str,
}

impl Metric {
    /// The name a scraper sees: a counter's with `_total`.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            _ => self.name.to_string(),
        }
    }
}

/// Declares the catalogue: one constant per metric and [`ALL`].
macro_rules! metrics {
    ($($konst:ident => ($name:literal, $kind:expr, [$($label:literal),*], $help:literal),)*) => {
        $(
            #[doc = $help]
            pub const $konst: Metric = Metric {
                name: $name,
                kind: $kind,
                labels: &[$($label),*],
                help: $help,
            };
        )*

        /// Every metric.
        pub const ALL: &[&Metric] = &[$(&$konst,)*];
    };
}

const MICROS: Kind = Kind::Histogram(Unit::Micros);
const COUNT: Kind = Kind::Histogram(Unit::Count);
use Kind::{Counter, Gauge};

metrics! {
    PUBLISHED => ("evrouter_published", Counter, ["family", "api"],
        "Events stored, by topic family and API."),
    REJECTED => ("evrouter_rejected", Counter, ["reason", "api"],
        "Publish requests refused (nothing of them stored), by reason and API."),
    REQUESTS_REFUSED => ("evrouter_requests_refused", Counter, ["reason", "api"],
        "Requests refused for want of a valid token or of a right, by reason (unauthenticated, forbidden) and API (http, grpc)."),
    DELIVERED => ("evrouter_delivered", Counter, ["subscription"],
        "Events delivered (answered 2xx)."),
    RETRIED => ("evrouter_retried", Counter, ["subscription"],
        "Attempts that failed and will be retried."),
    DEAD_LETTERED => ("evrouter_dead_lettered", Counter, ["subscription"],
        "Events moved to the dead-letter queue."),
    DROPPED => ("evrouter_dropped", Counter, ["subscription"],
        "Events dropped (404 or DROP by rule, or exhausted without a DLQ)."),
    EXPIRED => ("evrouter_expired", Counter, ["subscription"],
        "Events past their time to live, acked undelivered."),
    UNROUTED => ("evrouter_unrouted", Counter, ["subscription"],
        "Events no routing rule of a Dapr subscription took."),
    SEQUENCE_DUPLICATES => ("evrouter_sequence_duplicates", Counter, ["subscription"],
        "Sequence ordering: events whose number was already delivered or held."),
    SEQUENCE_GAPS_OPENED => ("evrouter_sequence_gaps_opened", Counter, ["subscription"],
        "Sequence ordering: gaps opened (an event ahead of the next number)."),
    SEQUENCE_GAPS_TIMED_OUT => ("evrouter_sequence_gaps_timed_out", Counter, ["subscription"],
        "Sequence ordering: gaps closed by their timeout."),
    SEQUENCE_LATE => ("evrouter_sequence_late", Counter, ["subscription"],
        "Sequence ordering: events that came after their gap was skipped."),
    IN_FLIGHT_EVENTS => ("evrouter_in_flight_events", Gauge, ["subscription"],
        "Events read and not yet finished on this instance."),
    REORDER_HELD_EVENTS => ("evrouter_reorder_held_events", Gauge, ["subscription"],
        "Sequence ordering: events held waiting for a gap to fill."),
    LAG_EVENTS => ("evrouter_lag_events", Gauge, ["subscription"],
        "Entries the subscription's group has not read yet, over all partitions (from Redis)."),
    PENDING_EVENTS => ("evrouter_pending_events", Gauge, ["subscription"],
        "Entries read by the subscription's group and not acked yet, over all partitions."),
    DEAD_LETTERS => ("evrouter_dead_letters", Gauge, ["subscription"],
        "Entries in the subscription's dead-letter streams."),
    LAG_SECONDS => ("evrouter_lag_seconds", Gauge, ["subscription"],
        "Age of the oldest entry the subscription has not acked (pending or unread); 0 when none."),
    REDIS_MEMORY_USED_BYTES => ("evrouter_redis_memory_used_bytes", Gauge, [],
        "Redis's used_memory."),
    REDIS_MEMORY_MAX_BYTES => ("evrouter_redis_memory_max_bytes", Gauge, [],
        "Redis's maxmemory (0: unbounded)."),
    REDIS_UP => ("evrouter_redis_up", Gauge, [],
        "Whether Redis answered the last check (every 5 s)."),
    READY => ("evrouter_ready", Gauge, [],
        "Whether this instance is ready: every watched part up and Redis answering."),
    OWNED_PARTITIONS => ("evrouter_owned_partitions", Gauge, [],
        "Partitions this instance holds the lease of."),
    BREAKER_OPEN => ("evrouter_breaker_open", Gauge, ["subscription", "endpoint"],
        "Whether the circuit breaker of an endpoint is open or probing (1) or closed (0)."),
    DAPR_APP_HEALTHY => ("evrouter_dapr_app_healthy", Gauge, ["app"],
        "Whether a Dapr app with health checks is healthy (1) or not (0); nothing is delivered to it while it is not."),
    PARTS_DOWN => ("evrouter_parts_down", Gauge, [],
        "Watched parts down now (a panic was caught and the part waits to restart)."),
    PANICS => ("evrouter_panics", Counter, ["part"],
        "Panics caught since start, by part."),
    UPTIME_SECONDS => ("evrouter_uptime_seconds", Gauge, [],
        "Seconds since this instance started."),
    SPANS_EXPORTED => ("evrouter_spans_exported", Counter, [],
        "Spans the OTLP collector accepted."),
    SPANS_DROPPED => ("evrouter_spans_dropped", Counter, ["reason"],
        "Spans dropped: the export queue was full (a slow collector), or an export failed."),
    PUBLISH_DURATION_SECONDS => ("evrouter_publish_duration_seconds", MICROS, ["family", "api"],
        "Publish requests: read and parsed to stored in Redis, per topic family and API."),
    DELIVERY_LATENCY_SECONDS => ("evrouter_delivery_latency_seconds", MICROS, ["subscription"],
        "End to end: received by evrouter to the subscriber's 2xx, per delivered event."),
    WEBHOOK_REQUEST_SECONDS => ("evrouter_webhook_request_seconds", MICROS, ["subscription", "endpoint"],
        "Webhook requests: sent to answered (or failed), per subscription and endpoint."),
    WEBHOOK_REQUEST_EVENTS => ("evrouter_webhook_request_events", COUNT, ["subscription"],
        "Events per webhook request (1 in single mode)."),
    REDIS_ROUND_TRIP_SECONDS => ("evrouter_redis_round_trip_seconds", MICROS, ["op"],
        "Redis round trips of the hot path: batched writes, reads, acks."),
    REDIS_BATCH_ENTRIES => ("evrouter_redis_batch_entries", COUNT, ["op"],
        "Entries carried by one Redis round trip of the hot path."),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const OPERATIONS: &str = include_str!("../../docs/operations.md");

    /// The rows of the table under `## Metrics`: the names of its first cell and its
    /// second cell (type and labels).
    fn rows() -> Vec<(Vec<String>, String)> {
        let section = OPERATIONS
            .split("\n## Metrics\n")
            .nth(1)
            .expect("docs/operations.md has a section `## Metrics`");
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let names = cells[1]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                (names, cells[2].to_string())
            })
            .collect()
    }

    #[test]
    fn the_operations_page_lists_every_metric_with_its_type_and_labels_and_no_other() {
        let rows = rows();
        for metric in ALL {
            let exposed = metric.exposed_name();
            let (_, kind_and_labels) = rows
                .iter()
                .find(|(names, _)| names.contains(&exposed))
                .unwrap_or_else(|| panic!("docs/operations.md, ## Metrics: no row for {exposed}"));
            let kind = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            assert!(
                kind_and_labels.starts_with(kind),
                "docs/operations.md calls {exposed} `{kind_and_labels}`, not a {kind}"
            );
            for label in metric.labels {
                assert!(
                    kind_and_labels.contains(&format!("`{label}`")),
                    "docs/operations.md does not name the label `{label}` of {exposed}"
                );
            }
        }
        let known: BTreeSet<String> = ALL.iter().map(|m| m.exposed_name()).collect();
        for name in rows.iter().flat_map(|(names, _)| names) {
            assert!(
                known.contains(name),
                "docs/operations.md lists {name}, which evrouter does not expose"
            );
        }
    }

    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        let names: BTreeSet<&str> = ALL.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), ALL.len());
        for metric in ALL {
            assert!(metric.name.starts_with("evrouter_"), "{}", metric.name);
            assert!(!metric.name.ends_with("_total"), "{}", metric.name);
            assert!(metric
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(!metric.help.is_empty() && !metric.help.contains('\n'));
        }
    }
}
