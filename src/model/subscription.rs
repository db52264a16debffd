//! Subscription specs as clients and config write them: who receives which topics, how,
//! and with what retry policy; and the check of a spec's values, every problem with its
//! path. Compiling a spec into a running subscription is the delivery layer's job.

use serde::{Deserialize, Serialize};

use super::pattern::TopicPattern;
pub use super::route::{RouteRule, Routes};
use super::violation::Violation;

/// A subscription as clients and config write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Unique name; also the consumer group name.
    pub name: String,
    /// Topic patterns (exact, `*`, `>`, `re:`).
    pub topics: Vec<String>,
    /// Webhook URLs; deliveries go round robin over the healthy ones.
    pub endpoints: Vec<String>,
    /// `single` (one event a request) or `bulk` (a JSON array of events).
    pub mode: DeliveryMode,
    /// Bulk batching.
    pub bulk: BulkSpec,
    /// `key` (one in-flight event per key), `sequence` (per key, in `metadata.sequence`
    /// order without gaps) or `none`.
    pub ordering: Ordering,
    /// The reorder buffer of `ordering = "sequence"`.
    pub reorder: ReorderSpec,
    /// Most events in flight (and read ahead) for this subscription on one instance.
    pub max_in_flight: usize,
    /// Most bytes of events in flight (and read ahead) for this subscription on one
    /// instance; reading waits beyond it.
    pub max_in_flight_bytes: u64,
    /// Request timeout.
    pub timeout_ms: u64,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    /// Retry backoff.
    pub backoff: BackoffSpec,
    /// Circuit breaker of each endpoint.
    pub breaker: BreakerSpec,
    /// Where a new subscription starts: `latest` or `earliest`.
    pub start: Start,
    /// Whether exhausted events go to the dead-letter stream (else they are dropped and
    /// counted).
    pub dead_letter: bool,
    /// Set for a subscription of a Dapr app: deliveries are CloudEvents to the app's
    /// routes, answered by Dapr's rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dapr: Option<DaprTarget>,
    /// The principal that owns it (set by evrouter from the caller's identity); none for
    /// subscriptions from config, Dapr apps, or when authentication is off. Only its owner
    /// and admins may change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What a 404 answer does: `retry` (the default for webhooks: an endpoint missing for a
    /// moment, during a rollout, must not drop events) or `drop` (the default for Dapr
    /// apps, as Dapr does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_404: Option<NotFound>,
    /// How its partitions are read.
    #[serde(skip_serializing_if = "ReadSpec::is_default")]
    pub read: ReadSpec,
}

/// How a subscription's partitions are read: by default as `delivery.read_linger` says. A
/// subscriber that batches and can wait (an archive, analytics) reads less often and more
/// at a time, which costs Redis and evrouter less per event (Kafka's `fetch.max.wait.ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadSpec {
    /// How long a reader that has caught up waits before it reads again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
}

impl ReadSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What a subscriber's 404 means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotFound {
    /// Retried like a 5xx (and dead-lettered after the last attempt).
    Retry,
    /// The event is dropped and counted.
    Drop,
}

impl SubscriptionSpec {
    /// Whether a 404 answer drops the event (else it is retried).
    pub fn drops_on_404(&self) -> bool {
        let default = if self.dapr.is_some() {
            NotFound::Drop
        } else {
            NotFound::Retry
        };
        self.on_404.unwrap_or(default) == NotFound::Drop
    }
}

/// How a Dapr app receives a subscription's events (from its `/dapr/subscribe`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaprTarget {
    /// The app's id.
    pub app_id: String,
    /// The pubsub name the app subscribed with.
    pub pubsubname: String,
    /// The topic as the app named it.
    pub topic: String,
    /// Routing rules: the first whose CEL `match` holds gives the path.
    pub rules: Vec<RouteRule>,
    /// The path when no rule matches (none: such events are acked and counted).
    pub default_path: Option<String>,
    /// Deliver the payload as published, without a CloudEvent around it.
    pub raw_payload: bool,
    /// Where events that exhaust their attempts are published, besides the DLQ.
    pub dead_letter_topic: Option<String>,
    /// The app speaks gRPC (`AppCallback`) rather than HTTP.
    pub grpc: bool,
}

impl Default for SubscriptionSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            topics: Vec::new(),
            endpoints: Vec::new(),
            mode: DeliveryMode::Single,
            bulk: BulkSpec::default(),
            ordering: Ordering::Key,
            reorder: ReorderSpec::default(),
            max_in_flight: 1000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            timeout_ms: 5000,
            max_attempts: 10,
            backoff: BackoffSpec::default(),
            breaker: BreakerSpec::default(),
            start: Start::Latest,
            dead_letter: true,
            dapr: None,
            owner: None,
            on_404: None,
            read: ReadSpec::default(),
        }
    }
}

/// How events are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// One event per request, the event's JSON as the body.
    Single,
    /// Up to `bulk.max_events` events of different keys per request, as a JSON array.
    Bulk,
}

/// Bulk batching settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkSpec {
    /// Most events per request.
    pub max_events: usize,
    /// Longest wait to fill a request.
    pub max_wait_ms: u64,
}

impl Default for BulkSpec {
    fn default() -> Self {
        Self {
            max_events: 100,
            max_wait_ms: 5,
        }
    }
}

/// Ordering guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Per key: at most one event of a key in flight.
    Key,
    /// Per key, in ascending `metadata.sequence` without gaps (held until gaps fill).
    Sequence,
    /// No ordering: events in parallel.
    None,
}

/// The reorder buffer of `ordering = "sequence"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReorderSpec {
    /// How long a gap may stay open before `on_timeout` closes it.
    pub timeout_ms: u64,
    /// `dead_letter` or `release`.
    pub on_timeout: GapPolicy,
    /// Most events held for one key.
    pub max_held_per_key: usize,
    /// Most events held in all (on one instance; at most half of `max_in_flight` is used,
    /// so that reading goes on while events are held).
    pub max_held: usize,
    /// The first number expected of a key never seen: `"first_seen"` or a number.
    pub start: ReorderStart,
}

impl Default for ReorderSpec {
    fn default() -> Self {
        Self {
            timeout_ms: 300_000,
            on_timeout: GapPolicy::DeadLetter,
            max_held_per_key: 1000,
            max_held: 100_000,
            start: ReorderStart::Named(NamedStart::FirstSeen),
        }
    }
}

/// What closes a gap that stays open too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapPolicy {
    /// The held events go to the DLQ (reason `sequence_gap_timeout`).
    DeadLetter,
    /// The held events are delivered in order, the missing numbers skipped.
    Release,
}

/// Where a key's sequence starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReorderStart {
    /// A fixed first number (events before it are held until it comes).
    At(u64),
    /// A named start.
    Named(NamedStart),
}

/// The named starts of a key's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedStart {
    /// The first number that arrives.
    FirstSeen,
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Only events published after it was created.
    Latest,
    /// Everything still retained.
    Earliest,
}

/// When an endpoint is skipped or paced. Each endpoint keeps its last `window` answers;
/// once it has at least `min_calls`, a share of unhealthy ones (5xx, 408, 429, no answer)
/// of `failure_rate` or more trips its breaker. While another endpoint is closed it opens:
/// after `cooldown_ms` up to `probes` requests go through at once, as many successes close
/// it, a failure opens it again. Otherwise it degrades: paced to an allowance per second
/// that starts at `probes` and follows its healthy answers, never below one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSpec {
    /// Share of unhealthy answers in the window that opens the breaker (0 < rate ≤ 1).
    pub failure_rate: f64,
    /// How many of the last answers are weighed.
    pub window: u32,
    /// Fewest answers in the window before the rate is weighed.
    pub min_calls: u32,
    /// How long an open breaker waits before probing.
    pub cooldown_ms: u64,
    /// Requests let through at once when probing (as many successes close the breaker),
    /// and a degraded breaker's first allowance per second.
    pub probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            window: 20,
            min_calls: 10,
            cooldown_ms: 2000,
            probes: 3,
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffSpec {
    /// First retry delay.
    pub initial_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial_ms: 100,
            max_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl BackoffSpec {
    /// The delay before retry number `attempt` (1 = after the first failure), with
    /// `unit` in [0, 1) drawn by the caller for the jitter.
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let base =
            (self.initial_ms as f64 * self.multiplier.powi(exponent)).min(self.max_ms as f64);
        let spread = base * self.jitter * (2.0 * unit - 1.0);
        (base + spread).clamp(0.0, self.max_ms as f64).round() as u64
    }
}

/// Longest durations a subscription may set (larger ones could overflow a deadline).
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

impl SubscriptionSpec {
    /// Checks every value; every problem is listed with its path (`/backoff/jitter`).
    pub fn check(&self) -> Result<(), Vec<Violation>> {
        let spec = self;
        let mut problems = Vec::new();
        let mut bad = |path: &str, message: String| {
            problems.push(Violation {
                path: path.to_string(),
                message,
            })
        };
        if !super::topic::is_valid_segment(&spec.name) || spec.name.len() > 100 {
            bad(
                "/name",
                "must be 1 to 100 lowercase letters, digits, `_` or `-`".into(),
            );
        }
        if spec.topics.is_empty() {
            bad("/topics", "at least one topic pattern is required".into());
        }
        for (i, topic) in spec.topics.iter().enumerate() {
            if let Err(e) = TopicPattern::parse(topic) {
                bad(&format!("/topics/{i}"), e.to_string());
            }
        }
        if spec.endpoints.is_empty() {
            bad("/endpoints", "at least one endpoint URL is required".into());
        }
        for (i, endpoint) in spec.endpoints.iter().enumerate() {
            let ok = endpoint.parse::<hyper::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                bad(
                    &format!("/endpoints/{i}"),
                    format!("`{endpoint}` is not an http:// or https:// URL"),
                );
            }
        }
        if spec.bulk.max_events == 0 || spec.bulk.max_events > 10_000 {
            bad("/bulk/max_events", "must be between 1 and 10000".into());
        }
        if spec.max_in_flight == 0 || spec.max_in_flight > 1_000_000 {
            bad("/max_in_flight", "must be between 1 and 1000000".into());
        }
        if !(65_536..=(1u64 << 40)).contains(&spec.max_in_flight_bytes) {
            bad(
                "/max_in_flight_bytes",
                "must be between 65536 (64 KiB) and 2^40".into(),
            );
        }
        if spec.timeout_ms == 0 || spec.timeout_ms > HOUR_MS {
            bad(
                "/timeout_ms",
                "must be between 1 and 3600000 (one hour)".into(),
            );
        }
        if spec.bulk.max_wait_ms > 60_000 {
            bad("/bulk/max_wait_ms", "must be at most 60000".into());
        }
        if spec.read.linger_ms.is_some_and(|ms| ms > 1_000) {
            bad("/read/linger_ms", "must be at most 1000".into());
        }
        if spec.breaker.cooldown_ms > DAY_MS {
            bad(
                "/breaker/cooldown_ms",
                "must be at most 86400000 (one day)".into(),
            );
        }
        if spec.backoff.max_ms > DAY_MS {
            bad(
                "/backoff/max_ms",
                "must be at most 86400000 (one day)".into(),
            );
        }
        let r = &spec.reorder;
        if r.timeout_ms == 0 || r.timeout_ms > DAY_MS {
            bad(
                "/reorder/timeout_ms",
                "must be between 1 and 86400000 (one day)".into(),
            );
        }
        if r.max_held_per_key == 0 {
            bad("/reorder/max_held_per_key", "must be at least 1".into());
        }
        if r.max_held == 0 {
            bad("/reorder/max_held", "must be at least 1".into());
        }
        if spec.max_attempts == 0 {
            bad("/max_attempts", "must be at least 1".into());
        }
        let b = &spec.backoff;
        if b.initial_ms == 0 || b.initial_ms > b.max_ms {
            bad(
                "/backoff/initial_ms",
                "must be > 0 and at most max_ms".into(),
            );
        }
        if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
            bad("/backoff/multiplier", "must be a number >= 1".into());
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            bad("/backoff/jitter", "must be between 0 and 1".into());
        }
        let breaker = &spec.breaker;
        if !(breaker.failure_rate > 0.0 && breaker.failure_rate <= 1.0) {
            bad(
                "/breaker/failure_rate",
                format!(
                    "must be above 0 and at most 1, not {}",
                    breaker.failure_rate
                ),
            );
        }
        if breaker.window == 0 || breaker.window > 1000 {
            bad("/breaker/window", "must be between 1 and 1000".into());
        }
        if breaker.min_calls == 0 || breaker.min_calls > breaker.window {
            bad(
                "/breaker/min_calls",
                format!("must be between 1 and the window ({})", breaker.window),
            );
        }
        if breaker.probes == 0 || breaker.probes > 100 {
            bad("/breaker/probes", "must be between 1 and 100".into());
        }
        if let Some(target) = &spec.dapr {
            // An HTTP app's route must join the app's URL into a URL; a gRPC app's is sent
            // as the request's `path`, as the app listed it.
            let route_ok = |path: &str| {
                target.grpc
                    || (path.starts_with('/')
                        && format!("http://app{path}").parse::<hyper::Uri>().is_ok())
            };
            for (i, rule) in target.rules.iter().enumerate() {
                if !route_ok(&rule.path) {
                    bad(
                        &format!("/dapr/rules/{i}/path"),
                        format!("`{}` must be a URL path starting with `/`", rule.path),
                    );
                }
            }
            if target.default_path.as_deref().is_some_and(|p| !route_ok(p)) {
                bad(
                    "/dapr/default_path",
                    "must be a URL path starting with `/`".into(),
                );
            }
            if target.rules.is_empty() && target.default_path.is_none() {
                bad(
                    "/dapr",
                    "a Dapr subscription needs a route, routing rules or a default path".into(),
                );
            }
            for (i, message) in Routes::check(&target.rules) {
                bad(&format!("/dapr/rules/{i}/match"), message);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid spec over a literal and a regex pattern, for tests here and in delivery.
    pub(crate) fn spec() -> SubscriptionSpec {
        SubscriptionSpec {
            name: "shipping".into(),
            topics: vec![
                "order.*".into(),
                r"re:^payment\.(captured|refunded)$".into(),
            ],
            endpoints: vec!["http://127.0.0.1:8080/events".into()],
            ..SubscriptionSpec::default()
        }
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let mut bad = spec();
        bad.name = "Ship ping".into();
        bad.topics = vec!["order..x".into()];
        bad.endpoints = vec!["ftp://x".into()];
        bad.max_attempts = 0;
        bad.backoff.jitter = 2.0;
        bad.breaker.cooldown_ms = u64::MAX;
        bad.backoff.max_ms = u64::MAX;
        bad.read.linger_ms = Some(1_001);
        let problems = bad.check().expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "/name",
            "/topics/0",
            "/endpoints/0",
            "/max_attempts",
            "/backoff/jitter",
            "/breaker/cooldown_ms",
            "/backoff/max_ms",
            "/read/linger_ms",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
    }

    #[test]
    fn how_it_is_read_is_written_only_when_set() {
        let plain = serde_json::to_value(spec()).expect("serializes");
        assert!(plain.get("read").is_none(), "{plain}");
        let mut lingering = spec();
        lingering.read.linger_ms = Some(50);
        let json = serde_json::to_value(&lingering).expect("serializes");
        assert_eq!(json["read"], serde_json::json!({"linger_ms": 50}));
        let back: SubscriptionSpec = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, lingering);
        assert!(lingering.check().is_ok());
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let b = BackoffSpec::default();
        assert_eq!(b.delay_ms(1, 0.5), 100);
        assert_eq!(b.delay_ms(2, 0.5), 200);
        assert_eq!(b.delay_ms(30, 0.5), 60_000);
        for attempt in 1..20 {
            for unit in [0.0, 0.25, 0.99] {
                let d = b.delay_ms(attempt, unit) as f64;
                let base = (100.0 * 2f64.powi(attempt as i32 - 1)).min(60_000.0);
                assert!(d >= base * 0.8 - 1.0 && d <= (base * 1.2).min(60_000.0) + 1.0);
            }
        }
    }
}
