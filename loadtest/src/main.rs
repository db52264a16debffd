//! `loadtest`: offers evrouter a fixed rate of publishes (open loop, latency measured from
//! each request's intended send time), or measures the raw Redis ceiling for the same
//! entries, and prints a summary and a JSON report.

mod bodies;
mod http;
mod raw;
mod report;
mod sink;

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
    /// Entries per pipeline in --raw-redis mode.
    #[arg(long, default_value_t = 256)]
    pub pipeline: usize,
    /// Also subscribe (`single` or `bulk`) with a built-in webhook sink and measure
    /// delivery: rate, end-to-end latency, loss, duplicates and per-key order.
    #[arg(long, value_parser = ["single", "bulk"])]
    pub subscribe: Option<String>,
    /// How long to wait after the load for the last deliveries.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = match &args.raw_redis {
        Some(url) => raw::run(&args, url).await?,
        None => http::run(&args).await?,
    };
    report.print();
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
