//! `evrouter restore`: writes archived events back into Redis directly, with a progress bar.

use anyhow::Context;

/// Restores `[from, to)` from the event store into Redis, drawing progress.
pub fn run(
    config: &evrouter::config::Config,
    from: &str,
    to: &str,
    topics: &[String],
    slice_events: u64,
) -> anyhow::Result<()> {
    let from = humantime::parse_rfc3339_weak(from).context("--from")?;
    let to = humantime::parse_rfc3339_weak(to).context("--to")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let restored = runtime.block_on(evrouter::restore(
        config,
        from,
        to,
        topics,
        slice_events,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    ))?;
    bar.finish();
    println!("{}", serde_json::to_string(&restored)?);
    Ok(())
}
