//! `loadtest`: offers evrouter a fixed rate of publishes (open loop, latency measured from
//! each request's intended send time), or measures the raw Redis ceiling for the same
//! entries, and prints a summary and a JSON report.

mod args;
mod bodies;
mod chaos;
mod chart;
mod drive;
mod eventstore;
mod grpc;
mod otlp;
mod progress;
mod raw;
mod report;
mod scrape;
mod sink;
mod spawn;

use clap::Parser;

use crate::args::Args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            args.noisy_rate
                .map(|_| (drive::NOISY_TOKEN, args.noisy_quota)),
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
    let before = scrape::scrape(&routers, args.token.as_deref()).await;
    let postgres_before = eventstore::postgres_cpu_seconds();
    let result = match &args.raw_redis {
        Some(url) => raw::run(&args, url).await,
        None => drive::run(&args, chaos, routers.clone()).await,
    };
    let mut report = result?;
    if args.raw_redis.is_none() {
        let after = scrape::scrape(&routers, args.token.as_deref()).await;
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
