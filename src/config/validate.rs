//! Validation: every value of a read config checked, every problem listed with its key's
//! path. It checks data only; nothing is started or compiled for use here.

use std::net::SocketAddr;
use std::time::Duration;

use super::{AuthMode, Config, ConfigDuration, ConfigProblem};
use crate::model::pattern::TopicPattern;

/// A duration setting as a result, for the checks below.
fn checked(value: &ConfigDuration) -> Result<Duration, String> {
    match value.error() {
        Some(why) => Err(why.to_string()),
        None => Ok(value.get()),
    }
}

impl Config {
    pub(super) fn validate(&self, problems: &mut Vec<ConfigProblem>, check_streams: bool) {
        let mut bad = |path: &str, message: String| {
            problems.push(ConfigProblem {
                path: path.to_string(),
                message,
            })
        };
        if self.server.listen.parse::<SocketAddr>().is_err() {
            bad(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:3500",
                    self.server.listen
                ),
            );
        }
        for (path, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("server.max_batch", self.server.max_batch),
            ("server.max_json_depth", self.server.max_json_depth),
            ("server.max_connections", self.server.max_connections),
            ("writer.writers", self.writer.writers),
            ("writer.max_batch", self.writer.max_batch),
            ("writer.queue_capacity", self.writer.queue_capacity),
            ("delivery.shards", self.delivery.shards),
            ("delivery.readers", self.delivery.readers),
            ("audit.max_entries", self.audit.max_entries as usize),
            ("audit.max_refusals", self.audit.max_refusals as usize),
            ("audit.refusal_callers", self.audit.refusal_callers),
            ("retention.dlq_max_len", self.retention.dlq_max_len as usize),
            (
                "dapr.grpc_max_concurrent_streams",
                self.dapr.grpc_max_concurrent_streams as usize,
            ),
        ] {
            if value == 0 {
                bad(path, "must be greater than 0".into());
            }
        }
        for (path, value) in [
            (
                "server.header_read_timeout",
                &self.server.header_read_timeout,
            ),
            ("server.publish_timeout", &self.server.publish_timeout),
            ("server.shutdown_budget", &self.server.shutdown_budget),
            ("redis.response_timeout", &self.redis.response_timeout),
            ("redis.connect_timeout", &self.redis.connect_timeout),
            ("writer.linger", &self.writer.linger),
            ("retention.check_interval", &self.retention.check_interval),
            ("delivery.lease_ttl", &self.delivery.lease_ttl),
            ("delivery.read_block", &self.delivery.read_block),
            ("delivery.read_linger", &self.delivery.read_linger),
            ("audit.retention", &self.audit.retention),
            ("audit.refusal_interval", &self.audit.refusal_interval),
            ("tracing.flush_interval", &self.tracing.flush_interval),
            ("tracing.timeout", &self.tracing.timeout),
            ("eventstore.batch_wait", &self.eventstore.batch_wait),
            ("dapr.grpc_idle_timeout", &self.dapr.grpc_idle_timeout),
            (
                "dapr.grpc_keepalive_interval",
                &self.dapr.grpc_keepalive_interval,
            ),
            (
                "dapr.grpc_keepalive_timeout",
                &self.dapr.grpc_keepalive_timeout,
            ),
        ] {
            match checked(value) {
                Ok(d)
                    if d.is_zero() && path != "writer.linger" && path != "delivery.read_linger" =>
                {
                    bad(path, "must be greater than 0".into())
                }
                Ok(_) => {}
                Err(message) => bad(path, message),
            }
        }
        for (path, message) in self.eventstore.problems() {
            bad(path, message);
        }
        for (path, message) in self.tracing.problems() {
            bad(path, message);
        }
        let share = self.retention.memory_share;
        if !(0.0..=1.0).contains(&share) {
            bad(
                "retention.memory_share",
                format!("must be from 0 to 1, not {share}"),
            );
        }
        let tls = self.redis.url.starts_with("rediss://");
        if !tls && !self.redis.url.starts_with("redis://") {
            bad(
                "redis.url",
                format!(
                    "`{}` is not a redis:// or rediss:// URL",
                    crate::model::redact::url(&self.redis.url)
                ),
            );
        }
        for (path, file) in [
            ("redis.tls_ca", &self.redis.tls_ca),
            ("redis.tls_client_cert", &self.redis.tls_client_cert),
            ("redis.tls_client_key", &self.redis.tls_client_key),
        ] {
            match file {
                Some(_) if !tls => bad(path, "applies to a rediss:// url only".into()),
                Some(file) if !file.is_file() => {
                    bad(path, format!("{} is not a readable file", file.display()))
                }
                _ => {}
            }
        }
        if self.redis.tls_client_cert.is_some() != self.redis.tls_client_key.is_some() {
            bad(
                "redis.tls_client_key",
                "tls_client_cert and tls_client_key go together".into(),
            );
        }
        if let Some(file) = &self.redis.password_file {
            if !file.is_file() {
                bad(
                    "redis.password_file",
                    format!("{} is not a readable file", file.display()),
                );
            }
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            bad(
                "redis.key_prefix",
                "must be non-empty and hold no braces".into(),
            );
        }
        for (path, pattern) in [
            (
                "validation.event_id_pattern",
                &self.validation.event_id_pattern,
            ),
            (
                "validation.event_type_pattern",
                &self.validation.event_type_pattern,
            ),
        ] {
            if let Err(e) = regex::Regex::new(pattern) {
                bad(path, format!("not a regular expression: {e}"));
            }
        }
        if let Some(dir) = &self.validation.schema_dir {
            if !dir.is_dir() {
                bad(
                    "validation.schema_dir",
                    format!("{} is not a directory", dir.display()),
                );
            }
        }
        for (path, value, floor) in [
            (
                "delivery.lease_ttl",
                &self.delivery.lease_ttl,
                Duration::from_millis(100),
            ),
            (
                "delivery.read_block",
                &self.delivery.read_block,
                Duration::from_millis(1),
            ),
        ] {
            if checked(value).is_ok_and(|d| !d.is_zero() && d < floor) {
                bad(path, format!("must be at least {floor:?}"));
            }
        }
        self.validate_dapr(&mut bad);
        self.validate_auth(&mut bad);
        if let Some(ca) = &self.webhooks.ca {
            if !ca.is_file() {
                bad(
                    "webhooks.ca",
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        if let Some(tls) = &self.server.tls {
            for (path, file) in [
                ("server.tls.cert", Some(&tls.cert)),
                ("server.tls.key", Some(&tls.key)),
                ("server.tls.client_ca", tls.client_ca.as_ref()),
            ] {
                if let Some(file) = file {
                    if !file.is_file() {
                        bad(path, format!("{} is not a readable file", file.display()));
                    }
                }
            }
            if tls.require_client_cert && tls.client_ca.is_none() {
                bad(
                    "server.tls.require_client_cert",
                    "needs server.tls.client_ca to check client certificates against".into(),
                );
            }
        }
        for (i, entry) in self.webhooks.allow.iter().enumerate() {
            let host_ok = !entry.is_empty()
                && entry.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            let ok = entry.parse::<ipnet::IpNet>().is_ok()
                || entry.parse::<std::net::IpAddr>().is_ok()
                || host_ok;
            if !ok {
                bad(
                    &format!("webhooks.allow[{i}]"),
                    format!(
                        "`{entry}` is not a host name, an address or a network like 10.0.0.0/8"
                    ),
                );
            }
        }
        let mut subscription_names = std::collections::HashSet::new();
        for (i, spec) in self.subscriptions.iter().enumerate() {
            if !subscription_names.insert(spec.name.as_str()) {
                bad(
                    &format!("subscriptions[{i}].name"),
                    format!("duplicate subscription `{}`", spec.name),
                );
            }
            if let Err(violations) = spec.check() {
                for v in violations {
                    let key = v.path.trim_start_matches('/').replace('/', ".");
                    bad(&format!("subscriptions[{i}].{key}"), v.message);
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let streams = if check_streams {
            &self.streams[..]
        } else {
            &[]
        };
        for (i, stream) in streams.iter().enumerate() {
            let at = |key: &str| format!("streams[{i}].{key}");
            if !crate::model::topic::is_valid_segment(&stream.name) {
                bad(
                    &at("name"),
                    format!(
                        "`{}` must be lowercase letters, digits, `_` or `-`",
                        stream.name
                    ),
                );
            }
            if !names.insert(stream.name.as_str()) {
                bad(&at("name"), format!("duplicate stream `{}`", stream.name));
            }
            if stream.partitions == 0 || stream.partitions > 4096 {
                bad(&at("partitions"), "must be between 1 and 4096".into());
            }
            for (j, topic) in stream.topics.iter().enumerate() {
                if let Err(e) = TopicPattern::parse(topic) {
                    bad(&at(&format!("topics[{j}]")), e.to_string());
                }
            }
            for (j, rule) in stream.keys.iter().enumerate() {
                if let Err(e) = TopicPattern::parse(&rule.topic) {
                    bad(&at(&format!("keys[{j}].topic")), e.to_string());
                }
                if !rule.pointer.starts_with('/') || rule.pointer.len() < 2 {
                    bad(
                        &at(&format!("keys[{j}].pointer")),
                        format!(
                            "`{}` is not a JSON pointer like /data/order_id",
                            rule.pointer
                        ),
                    );
                }
            }
            match checked(&stream.max_age) {
                Ok(d) if d.is_zero() => bad(&at("max_age"), "must be greater than 0".into()),
                Ok(_) => {}
                Err(message) => bad(&at("max_age"), message),
            }
            if stream.max_len == Some(0) {
                bad(&at("max_len"), "must be greater than 0".into());
            }
            if stream.max_bytes.is_some_and(|b| b.as_u64() == 0) {
                bad(&at("max_bytes"), "must be greater than 0".into());
            }
            if let Some(window) = &stream.dedup_window {
                match checked(window) {
                    Ok(d) if d.as_millis() == 0 => bad(&at("dedup_window"), "must be > 0".into()),
                    Ok(_) => {}
                    Err(message) => bad(&at("dedup_window"), message),
                }
            }
        }
    }

    fn validate_auth(&self, bad: &mut impl FnMut(&str, String)) {
        let auth = &self.auth;
        let loopback = self
            .server
            .listen
            .parse::<SocketAddr>()
            .map_or(true, |a| a.ip().is_loopback());
        if auth.mode == AuthMode::None && !loopback && !auth.allow_anonymous {
            bad(
                "auth.mode",
                format!(
                    "`none` on `{}`, which is not a loopback address: set mode = \"token\" with \
                     [[auth.principals]], or allow_anonymous = true to serve without authentication",
                    self.server.listen
                ),
            );
        }
        // The Dapr gRPC API is served by the same rule.
        let grpc_open = self
            .dapr
            .grpc_listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if auth.mode == AuthMode::None && grpc_open && !auth.allow_anonymous {
            bad(
                "dapr.grpc_listen",
                format!(
                    "`{}` is not a loopback address and authentication is off: set auth.mode = \
                     \"token\", allow_anonymous = true, or a loopback address",
                    self.dapr.grpc_listen
                ),
            );
        }
        if auth.mode == AuthMode::Token && auth.principals.is_empty() {
            bad(
                "auth.principals",
                "mode = \"token\" needs at least one principal".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, principal) in auth.principals.iter().enumerate() {
            let at = |key: &str| format!("auth.principals[{i}].{key}");
            if principal.name.is_empty() || principal.name.len() > 100 {
                bad(&at("name"), "must be 1 to 100 characters".into());
            }
            if !names.insert(principal.name.as_str()) {
                bad(
                    &at("name"),
                    format!("duplicate principal `{}`", principal.name),
                );
            }
            match (&principal.token_sha256, &principal.token_env) {
                (Some(hash), None) => {
                    let hex_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                    if !hex_ok {
                        bad(
                            &at("token_sha256"),
                            "must be the 64 hex digits of the token's SHA-256".into(),
                        );
                    } else if !hashes.insert(hash.to_ascii_lowercase()) {
                        bad(
                            &at("token_sha256"),
                            "another principal has the same token".into(),
                        );
                    }
                }
                (None, Some(var)) if !var.is_empty() => {}
                (None, None) if !principal.cert_names.is_empty() => {}
                (None, None) if auth.mode == AuthMode::Jwt => {}
                (None, _) => bad(
                    &at("token_sha256"),
                    "one of token_sha256, token_env or cert_names is required".into(),
                ),
                (Some(_), Some(_)) => bad(
                    &at("token_env"),
                    "give token_sha256 or token_env, not both".into(),
                ),
            }
            for (key, patterns) in [
                ("publish", &principal.publish),
                ("subscribe", &principal.subscribe),
            ] {
                for (j, pattern) in patterns.iter().enumerate() {
                    if let Err(e) = TopicPattern::parse(pattern) {
                        bad(&at(&format!("{key}[{j}]")), e.to_string());
                    }
                }
            }
        }
    }

    fn validate_dapr(&self, bad: &mut impl FnMut(&str, String)) {
        let dapr = &self.dapr;
        if !dapr.grpc_listen.is_empty() && dapr.grpc_listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "dapr.grpc_listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:50001 (empty: not served)",
                    dapr.grpc_listen
                ),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, pubsub) in dapr.pubsubs.iter().enumerate() {
            let at = |key: &str| format!("dapr.pubsubs[{i}].{key}");
            if pubsub.name.is_empty() || pubsub.name.contains('/') {
                bad(&at("name"), "must be a non-empty name without `/`".into());
            }
            if !names.insert(pubsub.name.as_str()) {
                bad(&at("name"), format!("duplicate pubsub `{}`", pubsub.name));
            }
            let prefix = &pubsub.topic_prefix;
            let prefix_ok = prefix.is_empty()
                || (prefix.ends_with('.')
                    && prefix
                        .trim_end_matches('.')
                        .split('.')
                        .all(crate::model::topic::is_valid_segment));
            if !prefix_ok {
                bad(
                    &at("topic_prefix"),
                    format!("`{prefix}` must be topic segments ending in `.`, like `billing.`"),
                );
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, app) in dapr.apps.iter().enumerate() {
            let at = |key: &str| format!("dapr.apps[{i}].{key}");
            if !crate::model::topic::is_valid_segment(&app.id) {
                bad(
                    &at("id"),
                    format!("`{}` must be lowercase letters, digits, `_` or `-`", app.id),
                );
            }
            if !ids.insert(app.id.as_str()) {
                bad(&at("id"), format!("duplicate app `{}`", app.id));
            }
            let ok = app
                .url
                .parse::<hyper::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                bad(&at("url"), format!("`{}` is not an http:// URL", app.url));
            }
            if app.max_attempts == 0 {
                bad(&at("max_attempts"), "must be at least 1".into());
            }
            if app.retry_initial_ms == 0 || app.retry_initial_ms > 60_000 {
                bad(
                    &at("retry_initial_ms"),
                    "must be between 1 and 60000".into(),
                );
            }
            if !app.health_path.starts_with('/') {
                bad(
                    &at("health_path"),
                    format!("`{}` must start with `/`", app.health_path),
                );
            }
            for (key, duration) in [
                ("health_interval", &app.health_interval),
                ("health_timeout", &app.health_timeout),
            ] {
                match checked(duration) {
                    Ok(d) if d < Duration::from_millis(10) => {
                        bad(&at(key), "must be at least 10ms".into())
                    }
                    Ok(_) => {}
                    Err(message) => bad(&at(key), message),
                }
            }
            if app.health_threshold == 0 {
                bad(&at("health_threshold"), "must be at least 1".into());
            }
            if let Some(name) = &app.principal {
                if !self.auth.principals.iter().any(|p| &p.name == name) {
                    bad(
                        &at("principal"),
                        format!("`{name}` is not one of auth.principals"),
                    );
                }
            }
        }
        if let Some(dir) = &dapr.subscriptions_dir {
            if !dir.is_dir() {
                bad(
                    "dapr.subscriptions_dir",
                    format!("{} is not a directory", dir.display()),
                );
            }
        }
        match checked(&dapr.refresh_interval) {
            Ok(d) if d < Duration::from_millis(100) => {
                bad("dapr.refresh_interval", "must be at least 100ms".into())
            }
            Ok(_) => {}
            Err(message) => bad("dapr.refresh_interval", message),
        }
    }
}
