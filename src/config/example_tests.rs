//! `evrouter.example.toml` is the one complete list of keys: every key the config accepts
//! is in it, set or commented out, under its own table, and it lists no key that is not.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;
use crate::model::subscription::{NotFound, ReadSpec, SubscriptionSpec};

const EXAMPLE: &str = include_str!("../../evrouter.example.toml");

/// Every key path the example file names, set or commented out: `server.listen`,
/// `streams.partitions` (array tables without brackets), `subscriptions.backoff.jitter`
/// (inline tables walked).
fn listed_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line
            .trim_start_matches(|c: char| c == '#' || c.is_whitespace())
            .trim_end();
        if line.starts_with('[') && line.ends_with(']') {
            table = line.trim_matches(|c| c == '[' || c == ']').to_string();
            // A table's own path and every table above it are keys too.
            let mut prefix = String::new();
            for part in table.split('.') {
                prefix = join(&prefix, part);
                keys.insert(prefix.clone());
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let path = join(&table, key);
        if let Ok(parsed) = toml::from_str::<toml::Table>(line) {
            if let Some(value) = parsed.get(key) {
                walk_toml(&path, value, &mut keys);
            }
        }
        keys.insert(path);
    }
    keys
}

fn walk_toml(path: &str, value: &toml::Value, keys: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (key, inner) in table {
            let inner_path = join(path, key);
            walk_toml(&inner_path, inner, keys);
            keys.insert(inner_path);
        }
    }
}

/// Every key path the config's types serialize, with one default element for each array of
/// tables and a default for each optional table.
fn code_keys() -> BTreeSet<String> {
    let mut root = serde_json::to_value(Config::default()).expect("config serializes");
    let element = |value: Value| Value::Array(vec![value]);
    let json = |value: serde_json::Result<Value>| value.expect("serializes");
    let fill = [
        (
            "/streams",
            element(json(serde_json::to_value(StreamConfig::default()))),
        ),
        (
            "/subscriptions",
            // Optional keys a config subscription may set (the owner and the Dapr target
            // are set by evrouter, not by config).
            element(json(serde_json::to_value(SubscriptionSpec {
                on_404: Some(NotFound::Retry),
                read: ReadSpec { linger_ms: Some(5) },
                ..SubscriptionSpec::default()
            }))),
        ),
        (
            "/dapr/pubsubs",
            element(json(serde_json::to_value(DaprPubsubConfig::default()))),
        ),
        (
            "/dapr/apps",
            element(json(serde_json::to_value(DaprAppConfig::default()))),
        ),
        (
            "/auth/principals",
            element(json(serde_json::to_value(PrincipalConfig::default()))),
        ),
        (
            "/auth/jwt",
            json(serde_json::to_value(JwtConfig::default())),
        ),
        (
            "/server/tls",
            json(serde_json::to_value(TlsConfig::default())),
        ),
        (
            "/eventstore/subjects",
            element(json(serde_json::to_value(SubjectConfig::default()))),
        ),
    ];
    for (pointer, value) in fill {
        *root.pointer_mut(pointer).expect(pointer) = value;
    }
    let mut keys = BTreeSet::new();
    walk_json("", &root, &mut keys);
    keys
}

fn walk_json(path: &str, value: &Value, keys: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let inner_path = join(path, key);
                walk_json(&inner_path, inner, keys);
                keys.insert(inner_path);
            }
        }
        // Arrays of tables: the keys of their (first) element.
        Value::Array(items) => {
            if let Some(first @ Value::Object(_)) = items.first() {
                walk_json(path, first, keys);
            }
        }
        _ => {}
    }
}

fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

#[test]
fn the_example_file_lists_every_key_and_no_other() {
    let listed = listed_keys(EXAMPLE);
    let code = code_keys();
    let missing: Vec<_> = code.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "keys the config accepts but evrouter.example.toml does not list: {missing:?}"
    );
    let unknown: Vec<_> = listed.difference(&code).collect();
    assert!(
        unknown.is_empty(),
        "keys evrouter.example.toml lists but the config does not accept: {unknown:?}"
    );
}

#[test]
fn the_key_reader_sees_commented_tables_and_inline_tables() {
    let listed = listed_keys(
        "top = 1\n[a]\nb = 2\n# [[c.d]]\n# # A comment = prose\n# e = { f = 1, g = { h = 2 } }\n",
    );
    let expected = [
        "top",
        "a",
        "a.b",
        "c",
        "c.d",
        "c.d.e",
        "c.d.e.f",
        "c.d.e.g",
        "c.d.e.g.h",
    ];
    assert_eq!(
        listed,
        expected
            .iter()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>()
    );
}
