//! One scrape's samples and their two encodings: OpenMetrics by `prometheus-client`'s
//! encoder, and the classic Prometheus text format (0.0.4) by [`Scrape::classic`]. Both
//! are written from the same families and the catalogue's names and help; neither is made
//! by editing the other's text.

use std::borrow::Cow;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::{Kind, Metric};

/// Label names and values of one sample.
pub(super) type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// One histogram's samples: labels, sum, count, and per-bucket counts with their upper
/// bounds (the last `f64::MAX`, shown as `+Inf`).
pub(super) type HistogramSample = (Labels, f64, u64, Vec<(f64, u64)>);

/// One family of samples.
#[derive(Debug)]
pub(super) enum Family {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, i64)>),
    FloatGauge(Vec<(Labels, f64)>),
    Histogram(Vec<HistogramSample>),
}

/// The labels of a sample of `metric`: its label names with `values`, in order.
pub(super) fn labels(metric: &Metric, values: &[&str]) -> Labels {
    debug_assert_eq!(metric.labels.len(), values.len(), "{}", metric.name);
    metric
        .labels
        .iter()
        .zip(values)
        .map(|(k, v)| (Cow::Borrowed(*k), Cow::Owned(v.to_string())))
        .collect()
}

/// What one scrape shows.
#[derive(Debug, Default)]
pub(super) struct Scrape {
    families: Vec<(&'static Metric, Family)>,
}

impl Scrape {
    /// Adds the samples of `metric`.
    pub(super) fn add(&mut self, metric: &'static Metric, family: Family) {
        debug_assert!(
            matches!(
                (metric.kind, &family),
                (Kind::Counter, Family::Counter(_))
                    | (Kind::Gauge, Family::Gauge(_) | Family::FloatGauge(_))
                    | (Kind::Histogram(_), Family::Histogram(_))
            ),
            "{} is not a {family:?}",
            metric.name
        );
        self.families.push((metric, family));
    }

    /// The scrape in OpenMetrics, by `prometheus-client`'s encoder.
    pub(super) fn openmetrics(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }

    /// The scrape in the classic Prometheus text format: counters named with `_total` in
    /// `# HELP` and `# TYPE` too, no `# UNIT`, no `# EOF`. Samples as in OpenMetrics,
    /// `le` first.
    pub(super) fn classic(&self) -> String {
        let mut out = String::new();
        for (metric, family) in &self.families {
            let name = metric.exposed_name();
            let kind = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            out.push_str(&format!("# HELP {name} {}\n", escape_help(metric.help)));
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            match family {
                Family::Counter(samples) => {
                    for (labels, value) in samples {
                        sample(&mut out, &name, None, labels, &value.to_string());
                    }
                }
                Family::Gauge(samples) => {
                    for (labels, value) in samples {
                        sample(&mut out, &name, None, labels, &value.to_string());
                    }
                }
                Family::FloatGauge(samples) => {
                    for (labels, value) in samples {
                        sample(&mut out, &name, None, labels, &float(*value));
                    }
                }
                Family::Histogram(samples) => {
                    let (sum, count, bucket) = (
                        format!("{name}_sum"),
                        format!("{name}_count"),
                        format!("{name}_bucket"),
                    );
                    for (labels, total, n, buckets) in samples {
                        sample(&mut out, &sum, None, labels, &float(*total));
                        sample(&mut out, &count, None, labels, &n.to_string());
                        let mut cumulative = 0u64;
                        for (bound, in_bucket) in buckets {
                            cumulative += in_bucket;
                            let le = if *bound == f64::MAX {
                                "+Inf".to_string()
                            } else {
                                float(*bound)
                            };
                            sample(
                                &mut out,
                                &bucket,
                                Some(&le),
                                labels,
                                &cumulative.to_string(),
                            );
                        }
                    }
                }
            }
        }
        out
    }
}

/// Writes one sample line: `name{le="…",label="value",…} value`.
fn sample(out: &mut String, name: &str, le: Option<&str>, labels: &Labels, value: &str) {
    out.push_str(name);
    if le.is_some() || !labels.is_empty() {
        out.push('{');
        let le = le.map(|le| (Cow::Borrowed("le"), Cow::Borrowed(le)));
        for (i, (key, value)) in le.iter().chain(labels.iter()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Help text with `\` and line feeds escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus reads it: the shortest form that reads back the same
/// (`1.0`, `0.00025`), `+Inf`, `-Inf` or `NaN`.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v:?}")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A sample without labels is written without braces.
        fn with<'a>(
            metric: &'a mut MetricEncoder<'_>,
            labels: &'a Labels,
            write: impl FnOnce(&mut MetricEncoder<'_>) -> Result<(), std::fmt::Error>,
        ) -> Result<(), std::fmt::Error> {
            if labels.is_empty() {
                write(metric)
            } else {
                write(&mut metric.encode_family(labels)?)
            }
        }
        for (descriptor, family) in &self.families {
            let kind = match descriptor.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram(_) => MetricType::Histogram,
            };
            let mut metric =
                encoder.encode_descriptor(descriptor.name, descriptor.help, None, kind)?;
            match family {
                Family::Counter(samples) => {
                    for (labels, value) in samples {
                        with(&mut metric, labels, |m| {
                            m.encode_counter::<NoLabelSet, _, u64>(value, None)
                        })?;
                    }
                }
                Family::Gauge(samples) => {
                    for (labels, value) in samples {
                        with(&mut metric, labels, |m| m.encode_gauge(value))?;
                    }
                }
                Family::FloatGauge(samples) => {
                    for (labels, value) in samples {
                        with(&mut metric, labels, |m| m.encode_gauge(value))?;
                    }
                }
                Family::Histogram(samples) => {
                    for (labels, sum, count, buckets) in samples {
                        with(&mut metric, labels, |m| {
                            m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
                        })?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalogue;

    fn scrape() -> Scrape {
        let mut scrape = Scrape::default();
        let delivered = &catalogue::DELIVERED;
        scrape.add(
            delivered,
            Family::Counter(vec![
                (labels(delivered, &["shipping"]), 3),
                (labels(delivered, &["odd \"name\"\\"]), 1),
            ]),
        );
        scrape.add(&catalogue::REDIS_UP, Family::Gauge(vec![(Vec::new(), 1)]));
        let lag = &catalogue::LAG_SECONDS;
        scrape.add(
            lag,
            Family::FloatGauge(vec![(labels(lag, &["shipping"]), 0.25)]),
        );
        let entries = &catalogue::REDIS_BATCH_ENTRIES;
        scrape.add(
            entries,
            Family::Histogram(vec![(
                labels(entries, &["write"]),
                12.0,
                3,
                vec![(1.0, 1), (10.0, 2), (f64::MAX, 0)],
            )]),
        );
        scrape
    }

    #[test]
    fn the_classic_format_names_counters_with_total_and_has_no_eof() {
        let expected = "\
# HELP evrouter_delivered_total Events delivered (answered 2xx).
# TYPE evrouter_delivered_total counter
evrouter_delivered_total{subscription=\"shipping\"} 3
evrouter_delivered_total{subscription=\"odd \\\"name\\\"\\\\\"} 1
# HELP evrouter_redis_up Whether Redis answered the last check (every 5 s).
# TYPE evrouter_redis_up gauge
evrouter_redis_up 1
# HELP evrouter_lag_seconds Age of the oldest entry the subscription has not acked (pending or unread); 0 when none.
# TYPE evrouter_lag_seconds gauge
evrouter_lag_seconds{subscription=\"shipping\"} 0.25
# HELP evrouter_redis_batch_entries Entries carried by one Redis round trip of the hot path.
# TYPE evrouter_redis_batch_entries histogram
evrouter_redis_batch_entries_sum{op=\"write\"} 12.0
evrouter_redis_batch_entries_count{op=\"write\"} 3
evrouter_redis_batch_entries_bucket{le=\"1.0\",op=\"write\"} 1
evrouter_redis_batch_entries_bucket{le=\"10.0\",op=\"write\"} 3
evrouter_redis_batch_entries_bucket{le=\"+Inf\",op=\"write\"} 3
";
        assert_eq!(scrape().classic(), expected);
    }

    #[test]
    fn both_formats_carry_the_same_samples() {
        // Without the odd label value: prometheus-client writes label values unescaped.
        let mut plain = scrape();
        if let Family::Counter(samples) = &mut plain.families[0].1 {
            samples.truncate(1);
        }
        let classic = plain.classic();
        let open = plain.openmetrics().expect("encodes");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("# TYPE evrouter_delivered counter\n"),
            "{open}"
        );
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&classic), samples(&open));
    }
}
