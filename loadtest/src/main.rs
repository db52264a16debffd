//! `loadtest`: offers evrouter a fixed rate of publishes (open loop, latency measured from
//! each request's intended send time), or measures the raw Redis ceiling for the same
//! entries, and prints a summary and a JSON report.

mod bodies;
mod chaos;
mod chart;
mod eventstore;
mod grpc;
mod http;
mod otlp;
mod progress;
mod raw;
mod report;
mod server;
mod sink;
mod spawn;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let mut database: Option<eventstore::Database> = None;
    let spawned = if args.spawn && args.raw_redis.is_none() {
        let mut env = Vec::new();
        if let Some(admin) = &args.eventstore {
            let db = eventstore::Database::create(admin).await?;
            env.push(("EVR_EVENTSTORE__URL".to_string(), format!("\"{}\"", db.url)));
            if args.subjects {
                env.push((
                    "EVR_EVENTSTORE__SUBJECTS".to_string(),
                    r#"[{ topics = [">"], pointers = ["/data/customer_id"] }]"#.to_string(),
                ));
            }
            database = Some(db);
        }
        if let Some(ratio) = args.trace_ratio {
            let sink = otlp::start().await?;
            env.push((
                "EVR_TRACING__OTLP_ENDPOINT".to_string(),
                format!("\"http://{sink}\""),
            ));
            env.push((
                "EVR_TRACING__SAMPLE_RATIO".to_string(),
                format!("{ratio:?}"),
            ));
        }
        let system = spawn::System::start(
            args.evrouter_bin.clone(),
            args.token.as_deref(),
            args.noisy_rate.map(|_| args.noisy_quota),
            args.instances,
            args.chaos,
            env,
        )
        .await?;
        args.router = system.router.clone();
        args.grpc = system.grpc_endpoints();
        Some(std::sync::Arc::new(tokio::sync::Mutex::new(system)))
    } else {
        None
    };
    let routers = match &spawned {
        Some(system) => system.lock().await.routers.clone(),
        None => vec![args.router.clone()],
    };
    let chaos = spawned.clone().filter(|_| args.chaos);
    let before = server::scrape(&routers, args.token.as_deref()).await;
    let postgres_before = eventstore::postgres_cpu_seconds();
    let result = match &args.raw_redis {
        Some(url) => raw::run(&args, url).await,
        None => http::run(&args, chaos, routers.clone()).await,
    };
    let mut report = result?;
    if args.raw_redis.is_none() {
        let after = server::scrape(&routers, args.token.as_deref()).await;
        if let Some(db) = &database {
            let published = after.published() as u64;
            report.archive = Some(db.settle(published, args.drain, postgres_before).await);
        }
        report.server = Some(after.since(&before));
    }
    let mut clean_exits = true;
    if let Some(system) = &spawned {
        let mut system = system.lock().await;
        report.cpu_seconds = Some(system.cpu_seconds());
        clean_exits = system.stop().await.iter().all(|clean| *clean);
    }
    drop(spawned);
    if let Some(db) = &database {
        db.drop_it().await;
    }
    report.print();
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::write(path, &report)?;
        println!("chart written to {}", path.display());
    }
    if args.check {
        if let Some(e2e) = &report.end_to_end {
            anyhow::ensure!(
                e2e.lost == 0 && e2e.order_violations == 0,
                "check failed: {} lost, {} order violations",
                e2e.lost,
                e2e.order_violations
            );
            anyhow::ensure!(
                e2e.duplicates <= args.max_duplicates,
                "check failed: {} duplicates (allowed {})",
                e2e.duplicates,
                args.max_duplicates
            );
        }
        anyhow::ensure!(report.events_ok > 0, "check failed: nothing was published");
        anyhow::ensure!(
            args.chaos || report.errors_by_status.is_empty(),
            "check failed: publishes answered {:?}",
            report.errors_by_status
        );
        anyhow::ensure!(
            clean_exits,
            "check failed: an evrouter did not exit 0 on SIGTERM"
        );
        if let Some(chaos) = &report.chaos {
            anyhow::ensure!(
                chaos.unclean_exits == 0,
                "check failed: {} SIGTERMs did not end in exit 0",
                chaos.unclean_exits
            );
        }
    }
    Ok(())
}
