//! An SVG chart of publish latency percentiles over the run, one point per second.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// Draws P50/P95/P99 of every second of the run.
pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
    let points = &report.timeline;
    let max_x = points.last().map(|p| p.second).unwrap_or(1.0).max(1.0);
    let max_y = points
        .iter()
        .map(|p| p.p99)
        .fold(1.0_f64, f64::max)
        .min(report.latency_ms.max.max(1.0))
        * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "publish latency, {} events/s offered ({})",
                report.offered_events_per_sec, report.scenario
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (name, color, pick) in [
        (
            "p50",
            BLUE,
            (|p: &crate::report::TimelinePoint| p.p50) as fn(&_) -> f64,
        ),
        ("p95", GREEN, |p| p.p95),
        ("p99", RED, |p| p.p99),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.second, pick(p))),
                &color,
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}
