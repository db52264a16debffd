//! evrouter's own view of a run, from its `/metrics`: the publish and end-to-end latency
//! histograms of every instance, read before and after the load, their difference summed,
//! and the P95 computed from the buckets the way Prometheus's `histogram_quantile` does
//! (linear within the bucket), so it is as precise as the bucket it falls in.

use std::collections::BTreeMap;

use serde::Serialize;

/// Cumulative bucket counts by upper bound (seconds), summed over label sets.
#[derive(Debug, Clone, Default)]
pub struct Buckets(BTreeMap<u64, f64>);

/// The histograms read from the instances.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    publish: Buckets,
    end_to_end: Buckets,
    /// Spans exported and dropped (every reason), summed over instances.
    spans: (f64, f64),
    /// Events stored, summed over instances.
    published: f64,
}

/// What the server measured over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSide {
    /// Publish P95 (read and parsed to stored), ms, with the bucket it lies in.
    pub publish_p95_ms: Option<f64>,
    pub publish_bucket_ms: Option<(f64, f64)>,
    /// End-to-end P95 (received to the subscriber's 2xx), ms, with its bucket.
    pub end_to_end_p95_ms: Option<f64>,
    pub end_to_end_bucket_ms: Option<(f64, f64)>,
    /// Spans exported to the OTLP collector and dropped, when tracing is on.
    pub spans_exported: u64,
    pub spans_dropped: u64,
}

/// The sum of a counter's samples (every label set).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bounds are kept in nanoseconds as integers so that they can be keys.
fn key(le: &str) -> Option<u64> {
    if le == "+Inf" {
        return Some(u64::MAX);
    }
    le.parse::<f64>().ok().map(|s| (s * 1e9).round() as u64)
}

fn parse(text: &str, name: &str, into: &mut Buckets) {
    let prefix = format!("{name}_bucket{{");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .and_then(|l| l.strip_suffix('"'));
        if let (Some(le), Ok(value)) = (le.and_then(key), value.trim().parse::<f64>()) {
            *into.0.entry(le).or_default() += value;
        }
    }
}

/// Reads every instance's histograms (a failed read counts as empty).
pub async fn scrape(routers: &[String], token: Option<&str>) -> Scrape {
    // A read that hangs counts as failed rather than holding the report back.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut scrape = Scrape::default();
    for router in routers {
        let mut request = client.get(format!("{router}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let Ok(response) = request.send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        parse(
            &text,
            "evrouter_publish_duration_seconds",
            &mut scrape.publish,
        );
        parse(
            &text,
            "evrouter_delivery_latency_seconds",
            &mut scrape.end_to_end,
        );
        scrape.published += counter(&text, "evrouter_published_total");
        scrape.spans.0 += counter(&text, "evrouter_spans_exported_total");
        scrape.spans.1 += counter(&text, "evrouter_spans_dropped_total");
    }
    scrape
}

impl Buckets {
    fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, n)| (*le, n - before.0.get(le).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// The quantile in seconds and the bucket it lies in, as `histogram_quantile` does.
    fn quantile(&self, q: f64) -> Option<(f64, (f64, f64))> {
        let total = *self.0.get(&u64::MAX)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for (le, count) in &self.0 {
            if *count >= rank {
                if *le == u64::MAX {
                    // In the open top bucket: the highest finite bound, as Prometheus says.
                    return Some((lower.0, (lower.0, f64::INFINITY)));
                }
                let upper = *le as f64 / 1e9;
                let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
                return Some((lower.0 + (upper - lower.0) * within, (lower.0, upper)));
            }
            if *le != u64::MAX {
                lower = (*le as f64 / 1e9, *count);
            }
        }
        None
    }
}

impl Scrape {
    /// Events stored since the instances started.
    pub fn published(&self) -> f64 {
        self.published
    }

    /// What happened between `before` and this scrape.
    pub fn since(&self, before: &Scrape) -> ServerSide {
        let ms = |s: f64| s * 1000.0;
        let publish = self.publish.since(&before.publish).quantile(0.95);
        let e2e = self.end_to_end.since(&before.end_to_end).quantile(0.95);
        ServerSide {
            publish_p95_ms: publish.map(|(v, _)| ms(v)),
            publish_bucket_ms: publish.map(|(_, (a, b))| (ms(a), ms(b))),
            end_to_end_p95_ms: e2e.map(|(v, _)| ms(v)),
            end_to_end_bucket_ms: e2e.map(|(_, (a, b))| (ms(a), ms(b))),
            spans_exported: (self.spans.0 - before.spans.0).max(0.0) as u64,
            spans_dropped: (self.spans.1 - before.spans.1).max(0.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p95_is_interpolated_within_its_bucket_and_runs_are_differenced() {
        let before = "x_bucket{le=\"0.001\",a=\"1\"} 0\nx_bucket{le=\"0.01\",a=\"1\"} 0\nx_bucket{le=\"+Inf\",a=\"1\"} 0\n";
        let after = "x_bucket{le=\"0.001\",a=\"1\"} 50\nx_bucket{le=\"0.01\",a=\"1\"} 100\nx_bucket{le=\"+Inf\",a=\"1\"} 100\n";
        let (mut b, mut a) = (Buckets::default(), Buckets::default());
        parse(before, "x", &mut b);
        parse(after, "x", &mut a);
        let (p95, bucket) = a.since(&b).quantile(0.95).expect("a quantile");
        // Rank 95 lies 45/50 of the way through (0.001, 0.01].
        assert!((p95 - 0.0091).abs() < 1e-9, "{p95}");
        assert_eq!(bucket, (0.001, 0.01));
        assert!(b.quantile(0.95).is_none(), "nothing recorded");
    }
}
