//! The `[tracing]` section: where spans are exported over OTLP/HTTP, how many traces are
//! recorded, and how spans wait for export.

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// Span export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TracingConfig {
    /// The OTLP/HTTP collector: a base URL (`http://collector:4318`, to which `/v1/traces`
    /// is added) or the full traces URL. None: no spans are recorded (the trace context
    /// is still passed on).
    pub otlp_endpoint: Option<String>,
    /// The share of new traces (publishes without a sampled `traceparent`) recorded, from
    /// 0 to 1; a trace a publisher continues follows its own sampled flag.
    pub sample_ratio: f64,
    /// Most finished spans waiting for export; more are dropped and counted.
    pub queue: usize,
    /// Most spans in one export request.
    pub max_batch: usize,
    /// Longest wait before a partial batch is sent.
    pub flush_interval: ConfigDuration,
    /// How long one export request may take.
    pub timeout: ConfigDuration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            queue: 8192,
            max_batch: 512,
            flush_interval: ConfigDuration::new("1s"),
            timeout: ConfigDuration::new("5s"),
        }
    }
}

impl TracingConfig {
    /// The URL spans are posted to: the endpoint, with `/v1/traces` added to a base URL.
    pub fn traces_url(&self) -> Option<String> {
        let endpoint = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        let after_scheme = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest);
        Some(if after_scheme.contains('/') {
            endpoint.to_string()
        } else {
            format!("{endpoint}/v1/traces")
        })
    }

    /// Problems with the section's values, by key.
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if let Some(url) = self.traces_url() {
            let parsed = url.parse::<hyper::Uri>();
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if parsed.is_err() || !scheme_ok {
                found.push((
                    "tracing.otlp_endpoint",
                    format!(
                        "`{}` is not an http:// or https:// URL",
                        crate::model::redact::url(&url)
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            found.push((
                "tracing.sample_ratio",
                format!("must be from 0 to 1, not {}", self.sample_ratio),
            ));
        }
        for (key, value) in [
            ("tracing.queue", self.queue),
            ("tracing.max_batch", self.max_batch),
        ] {
            if value == 0 {
                found.push((key, "must be greater than 0".into()));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        let mut config = TracingConfig::default();
        assert_eq!(config.traces_url(), None);
        config.otlp_endpoint = Some("http://127.0.0.1:4318".into());
        assert_eq!(
            config.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        config.otlp_endpoint = Some("https://otel.example/ingest/traces".into());
        assert_eq!(
            config.traces_url().as_deref(),
            Some("https://otel.example/ingest/traces")
        );
        assert!(config.problems().is_empty());
        config.otlp_endpoint = Some("udp://x".into());
        config.sample_ratio = 2.0;
        let keys: Vec<_> = config.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["tracing.otlp_endpoint", "tracing.sample_ratio"]);
    }
}
