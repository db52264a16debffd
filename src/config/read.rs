//! Reading the config: TOML text, `EVR_*` overrides, and each section on its own so that a
//! wrong type in one does not hide the problems of the others; every unknown key is
//! reported with its path.

use super::{
    Config, ConfigError, ConfigProblem, StreamConfig, LOG_ENV, LOG_FORMAT_ENV, REDIS_PASSWORD_ENV,
};

impl Config {
    /// Parses TOML text, applies `EVR_*` overrides, and validates everything.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let mut problems = Vec::new();
        // Variables the file names as holding secrets (`token_env = "EVR_TOKEN_PAYMENT"`)
        // are read by their keys, not taken for overrides.
        let mut named = Vec::new();
        variables_named(&toml::Value::Table(table.clone()), &mut named);
        for (name, value) in env {
            let not_config = [LOG_ENV, LOG_FORMAT_ENV, REDIS_PASSWORD_ENV];
            if not_config.contains(&name.as_str())
                || name.starts_with("EVR_TEST_")
                || named.contains(&name)
            {
                continue;
            }
            // An override names a section and a key (EVR_SECTION__KEY) or a key of the top
            // level (EVR_DEFAULT_STREAMS); other variables (EVR_TOKEN, the command line's
            // token) are not the config's.
            let overrides = |rest: &&str| {
                rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.to_ascii_lowercase().as_str())
            };
            if let Some(rest) = name.strip_prefix("EVR_").filter(overrides) {
                apply_env_override(&mut table, rest, &value, &mut problems);
            }
        }
        // Each section (and each stream) is read on its own, so that a wrong type in one
        // does not hide the problems of the others.
        let mut config = Config::default();
        let mut streams_ok = true;
        for (key, value) in table {
            match key.as_str() {
                "server" => {
                    read_section(&key, value, &mut problems, &mut config.server);
                }
                "redis" => {
                    read_section(&key, value, &mut problems, &mut config.redis);
                }
                "writer" => {
                    read_section(&key, value, &mut problems, &mut config.writer);
                }
                "validation" => {
                    read_section(&key, value, &mut problems, &mut config.validation);
                }
                "retention" => {
                    read_section(&key, value, &mut problems, &mut config.retention);
                }
                "delivery" => {
                    read_section(&key, value, &mut problems, &mut config.delivery);
                }
                "subscriptions" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let mut sub = Default::default();
                            if read_section(
                                &format!("subscriptions[{i}]"),
                                item,
                                &mut problems,
                                &mut sub,
                            ) {
                                config.subscriptions.push(sub);
                            }
                        }
                    }
                    _ => problems.push(ConfigProblem {
                        path: key,
                        message: "must be an array of tables ([[subscriptions]])".into(),
                    }),
                },
                "dapr" => {
                    read_section(&key, value, &mut problems, &mut config.dapr);
                }
                "auth" => {
                    read_section(&key, value, &mut problems, &mut config.auth);
                }
                "webhooks" => {
                    read_section(&key, value, &mut problems, &mut config.webhooks);
                }
                "eventstore" => {
                    read_section(&key, value, &mut problems, &mut config.eventstore);
                }
                "tracing" => {
                    read_section(&key, value, &mut problems, &mut config.tracing);
                }
                "audit" => {
                    read_section(&key, value, &mut problems, &mut config.audit);
                }
                "default_streams" => {
                    read_section(&key, value, &mut problems, &mut config.default_streams);
                }
                "streams" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let mut stream = StreamConfig::default();
                            streams_ok &= read_section(
                                &format!("streams[{i}]"),
                                item,
                                &mut problems,
                                &mut stream,
                            );
                            config.streams.push(stream);
                        }
                    }
                    _ => {
                        streams_ok = false;
                        problems.push(ConfigProblem {
                            path: key,
                            message: "must be an array of tables ([[streams]])".into(),
                        });
                    }
                },
                _ => problems.push(ConfigProblem {
                    path: key,
                    message: "unknown key".into(),
                }),
            }
        }
        config.validate(&mut problems, streams_ok);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Deserializes one section into `target`, recording unknown keys and a type error with
/// their full paths; `target` keeps its defaults when the section has a type error.
/// Returns whether the section's types were right.
fn read_section<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: toml::Value,
    problems: &mut Vec<ConfigProblem>,
    target: &mut T,
) -> bool {
    let join = |inner: &str| {
        if inner.is_empty() || inner == "." {
            prefix.to_string()
        } else if inner.starts_with('[') {
            format!("{prefix}{inner}")
        } else {
            format!("{prefix}.{inner}")
        }
    };
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
    let parsed: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut on_unknown));
    for path in unknown {
        problems.push(ConfigProblem {
            path: join(&path),
            message: "unknown key".into(),
        });
    }
    match parsed {
        Ok(value) => {
            *target = value;
            true
        }
        Err(err) => {
            problems.push(ConfigProblem {
                path: join(&err.path().to_string()),
                message: err.inner().to_string(),
            });
            false
        }
    }
}

/// Writes a key path as the rest of the messages do: `streams[0].colour`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// The keys of the file's top level that are not sections.
const TOP_LEVEL_KEYS: [&str; 3] = ["default_streams", "streams", "subscriptions"];

/// The environment variables named by the `*_env` keys anywhere in `value`.
fn variables_named(value: &toml::Value, found: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                match value {
                    toml::Value::String(name) if key.ends_with("_env") => found.push(name.clone()),
                    other => variables_named(other, found),
                }
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| variables_named(v, found)),
        _ => {}
    }
}

/// Sets `EVR_SECTION__KEY=value` into the table as `section.key`; the value is read as a
/// TOML value when it parses as one (numbers, booleans, arrays), else as a string.
fn apply_env_override(
    table: &mut toml::Table,
    name: &str,
    raw: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    let parts: Vec<String> = name.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        problems.push(ConfigProblem {
            path: format!("EVR_{name}"),
            message: "environment override must look like EVR_SECTION__KEY".into(),
        });
        return;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut current = table;
    for part in &parts[..parts.len() - 1] {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => current = t,
            _ => {
                problems.push(ConfigProblem {
                    path: parts.join("."),
                    message: format!("EVR_{name} overrides a key that is not a section"),
                });
                return;
            }
        }
    }
    if let Some(last) = parts.last() {
        current.insert(last.clone(), value);
    }
}
