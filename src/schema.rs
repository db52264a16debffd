//! The schema registry: the platform's base event schema and optional per-type schemas,
//! compiled once at start-up and applied to every published event.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::config::ValidationConfig;
use crate::model::event::{raw_str, RawEvent, RawMetadata};

pub use crate::model::violation::Violation;

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema file could not be read.
    #[error("cannot read schema {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A schema file is not JSON or not a valid schema.
    #[error("invalid schema {path}: {message}")]
    Invalid {
        /// File path or name of the schema.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Compiled validators: the base schema and per-type schemas.
pub struct SchemaRegistry {
    base: Validator,
    fast: BaseFastPath,
    /// Keyed by `event_type` or `event_type.v{major}`.
    by_type: HashMap<String, Validator>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("types", &self.by_type.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The platform's base event schema, with the configured id and type patterns.
pub fn base_schema(config: &ValidationConfig) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["event_id", "event_type", "timestamp", "version", "data", "metadata"],
        "properties": {
            "event_id": {"type": "string", "pattern": config.event_id_pattern},
            "event_type": {"type": "string", "pattern": config.event_type_pattern},
            "timestamp": {"type": "string", "format": "date-time"},
            "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+$"},
            "data": {"type": "object"},
            "metadata": {
                "type": "object",
                "required": ["correlation_id", "service", "version"],
                "properties": {
                    "correlation_id": {"type": "string", "minLength": 1},
                    "service": {"type": "string", "minLength": 1},
                    "version": {"type": "string"},
                    "partition_key": {"type": "string", "minLength": 1},
                    "sequence": {"type": "integer", "minimum": 0},
                    "traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"}
                }
            }
        }
    })
}

fn compile(schema: &Value, name: &str) -> Result<Validator, SchemaError> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| SchemaError::Invalid {
            path: name.to_string(),
            message: e.to_string(),
        })
}

impl SchemaRegistry {
    /// Compiles the base schema and every `*.json` file of `config.schema_dir`.
    pub fn load(config: &ValidationConfig) -> Result<Self, SchemaError> {
        let base = compile(&base_schema(config), "base schema")?;
        let fast = BaseFastPath::new(config)?;
        let mut by_type = HashMap::new();
        if let Some(dir) = &config.schema_dir {
            for (name, schema) in read_schema_dir(dir)? {
                let validator = compile(&schema, &name)?;
                by_type.insert(name, validator);
            }
        }
        Ok(Self {
            base,
            fast,
            by_type,
        })
    }

    /// Number of per-type schemas loaded.
    pub fn type_schemas(&self) -> usize {
        self.by_type.len()
    }

    /// Validates one event (with its `metadata` already read); returns every violation
    /// found (empty when valid).
    pub fn validate(&self, event: &RawEvent<'_>, metadata: &RawMetadata<'_>) -> Vec<Violation> {
        // The common case is valid: checks read straight off the raw fields settle it
        // without a tree; anything they cannot vouch for goes to the schema itself.
        if !self.fast.surely_valid(event, metadata) {
            let light = light_tree(event);
            if !self.base.is_valid(&light) {
                return self.base.iter_errors(&light).map(violation).collect();
            }
        }
        let mut violations = Vec::new();
        if let Some(validator) = self.type_validator(event) {
            match serde_json::from_str::<Value>(event.raw) {
                Ok(full) if validator.is_valid(&full) => {}
                Ok(full) => violations.extend(validator.iter_errors(&full).map(violation)),
                Err(e) => violations.push(Violation {
                    path: String::new(),
                    message: e.to_string(),
                }),
            }
        }
        violations
    }

    fn type_validator(&self, event: &RawEvent<'_>) -> Option<&Validator> {
        if self.by_type.is_empty() {
            return None;
        }
        let event_type = event.event_type.and_then(raw_str)?;
        let major = event
            .version
            .and_then(raw_str)
            .and_then(|v| v.split('.').next().map(str::to_string));
        if let Some(major) = major {
            if let Some(v) = self.by_type.get(&format!("{event_type}.v{major}")) {
                return Some(v);
            }
        }
        self.by_type.get(event_type.as_ref())
    }
}

/// Stands in for the base schema on the hot path. It answers "surely valid" only when
/// every constraint of the schema holds: the string patterns and the `date-time` format
/// are checked by small validators compiled from the same schema text (so by the same
/// engine), the rest straight on the raw JSON. Anything it cannot vouch for (escapes where
/// none are expected, numbers written as `1.0`, a missing field) is left to the schema,
/// which then decides and explains.
struct BaseFastPath {
    event_id: Validator,
    event_type: Validator,
    timestamp: Validator,
}

thread_local! {
    /// A string value reused for the small validators, so that checking allocates nothing.
    static SCRATCH: RefCell<Value> = const { RefCell::new(Value::String(String::new())) };
}

impl BaseFastPath {
    fn new(config: &ValidationConfig) -> Result<Self, SchemaError> {
        let base = base_schema(config);
        let part = |name: &str| compile(&base["properties"][name], "base schema");
        Ok(Self {
            event_id: part("event_id")?,
            event_type: part("event_type")?,
            timestamp: part("timestamp")?,
        })
    }

    fn surely_valid(&self, event: &RawEvent<'_>, metadata: &RawMetadata<'_>) -> bool {
        let (Some(id), Some(ty), Some(ts), Some(version), Some(data), Some(meta)) = (
            event.event_id,
            event.event_type,
            event.timestamp,
            event.version,
            event.data,
            event.metadata,
        ) else {
            return false;
        };
        data.get().starts_with('{')
            && meta.get().starts_with('{')
            && reads_back_plainly(meta.get())
            && is_major_minor(version.get())
            && metadata
                .correlation_id
                .is_some_and(|v| is_non_empty_string(v.get()))
            && metadata
                .service
                .is_some_and(|v| is_non_empty_string(v.get()))
            && metadata.version.is_some_and(|v| v.get().starts_with('"'))
            && metadata
                .partition_key
                .is_none_or(|v| is_non_empty_string(v.get()))
            && metadata.sequence.is_none_or(|v| is_digits(v.get()))
            && metadata.traceparent.is_none_or(|v| is_traceparent(v.get()))
            && matches_string(&self.event_id, id)
            && matches_string(&self.event_type, ty)
            && matches_string(&self.timestamp, ts)
    }
}

/// Whether a raw JSON string value satisfies `validator` (false for any other value).
fn matches_string(validator: &Validator, raw: &RawValue) -> bool {
    let Some(text) = raw_str(raw) else {
        return false;
    };
    SCRATCH.with(|scratch| {
        let Ok(mut value) = scratch.try_borrow_mut() else {
            return false;
        };
        if let Value::String(s) = &mut *value {
            s.clear();
            s.push_str(&text);
        } else {
            *value = Value::String(text.into_owned());
        }
        validator.is_valid(&value)
    })
}

/// Whether a metadata object surely parses into a tree the same way the schema would see
/// it: no escapes at all (a lone surrogate fails to parse), and no number with an
/// exponent or more than 19 digits (out of range for the tree). Anything else is left to
/// the schema.
fn reads_back_plainly(raw: &str) -> bool {
    if raw.contains('\\') {
        return false;
    }
    let mut in_string = false;
    let mut digits = 0;
    let mut previous = b' ';
    for &b in raw.as_bytes() {
        if b == b'"' {
            in_string = !in_string;
        } else if !in_string {
            if b.is_ascii_digit() {
                digits += 1;
                if digits > 19 {
                    return false;
                }
            } else {
                if matches!(b, b'e' | b'E') && (previous.is_ascii_digit() || previous == b'.') {
                    return false;
                }
                digits = 0;
            }
        }
        previous = b;
    }
    true
}

/// A JSON string without escapes holding the bytes of `inner`.
fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// A JSON string of at least one character (any escape is one or more).
fn is_non_empty_string(raw: &str) -> bool {
    raw.len() > 2 && raw.starts_with('"')
}

/// `^[0-9]+\.[0-9]+$` on a string without escapes.
fn is_major_minor(raw: &str) -> bool {
    plain_string(raw)
        .and_then(|s| s.split_once('.'))
        .is_some_and(|(major, minor)| is_digits(major) && is_digits(minor))
}

/// One or more ASCII digits: a non-negative JSON integer written plainly.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$` on a string without escapes.
fn is_traceparent(raw: &str) -> bool {
    let Some(s) = plain_string(raw) else {
        return false;
    };
    let mut parts = s.split('-');
    let lower_hex = |p: &str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    [2, 32, 16, 2].iter().all(|len| {
        parts
            .next()
            .is_some_and(|p| p.len() == *len && lower_hex(p))
    }) && parts.next().is_none()
}

/// The event as a small tree for the base schema: every top-level field it checks, with
/// `data` replaced by an empty object when it is one (its contents are not checked there).
fn light_tree(event: &RawEvent<'_>) -> Value {
    let mut map = Map::with_capacity(6);
    let fields = [
        ("event_id", event.event_id),
        ("event_type", event.event_type),
        ("timestamp", event.timestamp),
        ("version", event.version),
        ("metadata", event.metadata),
    ];
    for (name, raw) in fields {
        if let Some(raw) = raw {
            let value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            map.insert(name.to_string(), value);
        }
    }
    if let Some(data) = event.data {
        let value = if data.get().starts_with('{') {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(data.get()).unwrap_or(Value::Null)
        };
        map.insert("data".to_string(), value);
    }
    Value::Object(map)
}

fn violation(error: jsonschema::ValidationError<'_>) -> Violation {
    let mut path = error.instance_path().as_str().to_string();
    if let ValidationErrorKind::Required { property } = error.kind() {
        if let Some(name) = property.as_str() {
            path.push('/');
            path.push_str(&name.replace('~', "~0").replace('/', "~1"));
        }
    }
    Violation {
        path,
        message: error.to_string(),
    }
}

fn read_schema_dir(dir: &Path) -> Result<Vec<(String, Value)>, SchemaError> {
    let read_err = |source| SchemaError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut schemas = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| SchemaError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        schemas.push((name, schema));
    }
    Ok(schemas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn check(registry: &SchemaRegistry, text: &str) -> Vec<Violation> {
        let raw: &RawValue = serde_json::from_str(text).expect("json");
        let event = RawEvent::parse(raw).expect("object");
        registry.validate(&event, &RawMetadata::parse(event.metadata))
    }

    /// What the fast path and the schema itself say of one event.
    fn both(registry: &SchemaRegistry, text: &str) -> (bool, bool) {
        let raw: &RawValue = serde_json::from_str(text).expect("json");
        let event = RawEvent::parse(raw).expect("object");
        let fast = registry
            .fast
            .surely_valid(&event, &RawMetadata::parse(event.metadata));
        (fast, registry.base.is_valid(&light_tree(&event)))
    }

    #[test]
    fn fast_path_vouches_only_for_what_the_schema_accepts() {
        let registry = SchemaRegistry::load(&ValidationConfig::default()).expect("compiles");
        let with_trace = GOOD.replace(
            r#""version":"1.0.0"}"#,
            r#""version":"1.0.0","sequence":7,"partition_key":"k","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#,
        );
        // The everyday events must take the fast path, or it saves nothing.
        assert_eq!(both(&registry, GOOD), (true, true));
        assert_eq!(both(&registry, &with_trace), (true, true));
        let variants = [
            (r#""evt_order_1""#, r#""order-1""#),
            (r#""evt_order_1""#, r#""evt_order_\u0031""#),
            (r#""evt_order_1""#, "17"),
            (r#""order.created""#, r#""Order""#),
            (r#""order.created""#, "null"),
            (r#""2026-01-30T10:00:00Z""#, r#""2026-01-30""#),
            (r#""2026-01-30T10:00:00Z""#, r#""2026-02-30T10:00:00Z""#),
            (r#""2026-01-30T10:00:00Z""#, r#""2026-01-30t10:00:00z""#),
            (
                r#""2026-01-30T10:00:00Z""#,
                r#""2026-01-30T10:00:00.123+02:00""#,
            ),
            (r#""version":"1.0""#, r#""version":"1""#),
            (r#""version":"1.0""#, r#""version":"1.0.1""#),
            (r#""version":"1.0""#, r#""version":"1.0\n""#),
            (r#""version":"1.0""#, r#""version":1.0"#),
            (r#"{"order_id":"o1","total":5}"#, "[]"),
            (r#"{"order_id":"o1","total":5}"#, r#""x""#),
            (r#""correlation_id":"c""#, r#""correlation_id":"""#),
            (r#""correlation_id":"c""#, r#""correlation_id":"\u0000""#),
            (r#""correlation_id":"c""#, r#""correlation_id":3"#),
            (r#""correlation_id":"c","#, ""),
            (r#""service":"order-service""#, r#""service":[]"#),
            (r#""version":"1.0.0""#, r#""version":1"#),
            (r#""version":"1.0.0""#, r#""version":"1.0.0","sequence":-1"#),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","sequence":2.0"#,
            ),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","sequence":1e3"#,
            ),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","sequence":"3""#,
            ),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","partition_key":"""#,
            ),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","traceparent":"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01""#,
            ),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-2""#,
            ),
            (r#""metadata":{"#, r#""metadata":null,"m":{"#),
            (r#""correlation_id":"c""#, r#""correlation_id":"\ud800""#),
            (r#""version":"1.0.0""#, r#""version":"1.0.0","x":1e999"#),
            (
                r#""version":"1.0.0""#,
                r#""version":"1.0.0","sequence":12345678901234567890123"#,
            ),
            (r#""data":"#, r#""datum":"#),
        ];
        for (from, to) in variants {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from} not found");
            let (fast, schema) = both(&registry, &text);
            assert!(
                !fast || schema,
                "fast path vouched for an invalid event: {text}"
            );
            // The answer the client gets is the schema's, whichever path checked it.
            assert_eq!(check(&registry, &text).is_empty(), schema, "{text}");
        }
    }

    const GOOD: &str = r#"{"event_id":"evt_order_1","event_type":"order.created","timestamp":"2026-01-30T10:00:00Z","version":"1.0","data":{"order_id":"o1","total":5},"metadata":{"correlation_id":"c","service":"order-service","version":"1.0.0"}}"#;

    #[test]
    fn base_schema_accepts_the_platform_examples() {
        let registry = SchemaRegistry::load(&ValidationConfig::default()).expect("compiles");
        assert!(check(&registry, GOOD).is_empty());
    }

    #[test]
    fn base_schema_reports_paths() {
        let registry = SchemaRegistry::load(&ValidationConfig::default()).expect("compiles");
        let bad = r#"{"event_id":"order-1","event_type":"order.created","timestamp":"yesterday","version":"1","data":[],"metadata":{"service":"s","version":"1"}}"#;
        let paths: Vec<String> = check(&registry, bad).into_iter().map(|v| v.path).collect();
        for expected in [
            "/event_id",
            "/timestamp",
            "/version",
            "/data",
            "/metadata/correlation_id",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} not in {paths:?}"
            );
        }
    }

    #[test]
    fn per_type_schema_by_major_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = json!({"type":"object","properties":{"data":{"type":"object","required":["order_id"],"properties":{"total":{"type":"number","minimum":0}}}}});
        std::fs::write(dir.path().join("order.created.v1.json"), schema.to_string())
            .expect("write");
        let config = ValidationConfig {
            schema_dir: Some(dir.path().to_path_buf()),
            ..ValidationConfig::default()
        };
        let registry = SchemaRegistry::load(&config).expect("compiles");
        assert_eq!(registry.type_schemas(), 1);
        assert!(check(&registry, GOOD).is_empty());
        let negative = GOOD.replace("\"total\":5", "\"total\":-5");
        let violations = check(&registry, &negative);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].path, "/data/total");
        let v2 = GOOD
            .replace("\"version\":\"1.0\"", "\"version\":\"2.0\"")
            .replace("\"total\":5", "\"total\":-5");
        assert!(
            check(&registry, &v2).is_empty(),
            "v2 has no schema of its own"
        );
    }
}
