//! The command line: what to offer evrouter (or Redis alone), how, and what to write after.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// evrouter's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3500")]
    pub router: String,
    /// Offered rate in events per second.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Measured duration (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Events per request; 1 sends single events (a JSON object), more send an array.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// HTTP connections (one request in flight on each).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Distinct entity keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Subscriptions to the run's topics: the checked one, and N - 1 more whose
    /// deliveries the sink answers without reading (to measure how cost grows with them).
    #[arg(long, default_value_t = 1)]
    pub subscriptions: usize,
    /// Bytes of padding added to every event's `data` (`"pad":"xx…"`), to measure how
    /// cost grows with event size.
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
    /// Topic to publish to.
    #[arg(long, default_value = "order.created")]
    pub topic: String,
    /// Instead of evrouter, measure pipelined XADD of the same entries against this Redis.
    #[arg(long)]
    pub raw_redis: Option<String>,
    /// In --raw-redis mode, only append (no XREADGROUP + XACK beside it).
    #[arg(long)]
    pub raw_write_only: bool,
    /// Entries per pipeline in --raw-redis mode.
    #[arg(long, default_value_t = 256)]
    pub pipeline: usize,
    /// Also subscribe (`single` or `bulk`) with a built-in webhook sink and measure
    /// delivery: rate, end-to-end latency, loss, duplicates and per-key order.
    #[arg(long, alias = "subscribe", value_parser = ["single", "bulk"])]
    pub subscription_mode: Option<String>,
    /// Ordering of the subscription: `key`, `sequence` (per key in `metadata.sequence`
    /// order, through evrouter's reorder buffer) or `none`; order is checked under `key`
    /// and `sequence`.
    #[arg(long, default_value = "key", value_parser = ["key", "sequence", "none"])]
    pub ordering: String,
    /// Which publish API: `evrouter` (`/v1/publish/{topic}`, a batch as a JSON array) or
    /// `dapr` (the Dapr sidecar API: `/v1.0/publish/pubsub/{topic}` for single events,
    /// bulk publish for batches, each event's key as its `partitionKey`) or `dapr-grpc`
    /// (the same through the Dapr runtime API over gRPC: `PublishEvent`,
    /// `BulkPublishEvent`).
    #[arg(long, default_value = "evrouter", value_parser = ["evrouter", "dapr", "dapr-grpc"])]
    pub api: String,
    /// With `--api dapr-grpc` and no `--spawn`: evrouter's gRPC API (`host:port`).
    #[arg(long, default_value = "127.0.0.1:50001")]
    pub grpc: Vec<String>,
    /// `single-topic` (every event to `--topic`) or `seed-mix` (the platform's topics in
    /// their documented proportions).
    #[arg(long, default_value = "single-topic", value_parser = ["single-topic", "seed-mix"])]
    pub scenario: String,
    /// Start a private redis-server and evrouter on free ports for the run (and stop them
    /// after); `--router` is then ignored.
    #[arg(long)]
    pub spawn: bool,
    /// The evrouter binary for `--spawn` (default: beside this one).
    #[arg(long)]
    pub evrouter_bin: Option<PathBuf>,
    /// A bearer token for every request. With `--spawn`, evrouter is started with
    /// authentication on and this token as the one principal's (every right).
    #[arg(long)]
    pub token: Option<String>,
    /// A second, noisy publisher alongside the measured one: events per second it offers
    /// (batches of `--batch` to `loadtest.noise`, which the built-in subscriber does not
    /// read, with its own token). With `--spawn`, it
    /// is a principal of its own with a quota of `--noisy-quota` events/s.
    #[arg(long)]
    pub noisy_rate: Option<u64>,
    /// The noisy publisher's quota with `--spawn` (events/s).
    #[arg(long, default_value_t = 5_000)]
    pub noisy_quota: u32,
    /// Fail (exit 1) when an event answered 2xx was never delivered (compared by id),
    /// when events arrived out of order or more than `--max-duplicates` times again, when a
    /// publish got an answer other than 2xx (except under `--chaos`), or when a spawned
    /// evrouter did not exit 0 on SIGTERM (for CI smoke runs).
    #[arg(long)]
    pub check: bool,
    /// Deliveries of an event beyond its first that `--check` allows.
    #[arg(long, default_value_t = 0)]
    pub max_duplicates: u64,
    /// With `--spawn`: this many evrouter instances over one Redis; publishes are spread
    /// over them (a connection moves to the next instance when its own fails).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// With `--spawn`: a durable Redis (appendfsync always), and every 4–10 s one fault at
    /// random: an instance stopped (SIGTERM, must exit 0) or killed (SIGKILL) and started
    /// again, paused (SIGSTOP) for 2–6 s, or Redis killed and started again.
    #[arg(long)]
    pub chaos: bool,
    /// Write an SVG chart of latency percentiles over time here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// How long to wait after the load for the last deliveries.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// With `--spawn`: export spans (`[tracing]`) at this sample ratio to a built-in OTLP/HTTP
    /// sink that answers every export at once (what span recording and export cost).
    #[arg(long)]
    pub trace_ratio: Option<f64>,
    /// With `--spawn`: an event store in a database of its own on this PostgreSQL server
    /// (a postgres:// URL of a database to connect to for creating it); the report says
    /// how fast the archive kept up and what PostgreSQL spent.
    #[arg(long)]
    pub eventstore: Option<String>,
    /// With `--eventstore`: every event's `/data/customer_id` is its data subject, so
    /// those events' payloads are archived sealed under their subjects' keys.
    #[arg(long)]
    pub subjects: bool,
}
