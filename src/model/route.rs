//! Routing rules of a Dapr app's subscription: CEL expressions over the CloudEvent (`event.type`,
//! `event.data.amount > 100`, `has(event.data.x)`, …); the first rule that holds gives the
//! app's path, else the default path.

use cel::{Context, Program, Value};

use serde::{Deserialize, Serialize};

/// One routing rule of a Dapr subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteRule {
    /// A CEL expression over `event` (the CloudEvent).
    #[serde(rename = "match")]
    pub matches: String,
    /// The app's path for events that match.
    pub path: String,
}

/// Compiled routing rules of one subscription.
pub struct Routes {
    rules: Vec<(Program, String)>,
    default: Option<String>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("rules", &self.rules.len())
            .field("default", &self.default)
            .finish()
    }
}

impl Routes {
    /// Compiles every rule; the errors name the rule's index.
    pub fn compile(
        rules: &[RouteRule],
        default: Option<&str>,
    ) -> Result<Self, Vec<(usize, String)>> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut errors = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            // An empty `match` always matches, as in Dapr.
            let source = if rule.matches.trim().is_empty() {
                "true"
            } else {
                rule.matches.as_str()
            };
            // CEL's parser is not guarded against every input; a panic is a refused rule.
            let parsed = std::panic::catch_unwind(|| Program::compile(source));
            match parsed {
                Ok(Ok(program)) => compiled.push((program, rule.path.clone())),
                Ok(Err(err)) => errors.push((i, format!("not a CEL expression: {err}"))),
                Err(_) => errors.push((i, "not a CEL expression".to_string())),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                rules: compiled,
                default: default.map(str::to_string),
            })
        } else {
            Err(errors)
        }
    }

    /// The rules that are not CEL expressions, by index, with why.
    pub fn check(rules: &[RouteRule]) -> Vec<(usize, String)> {
        Self::compile(rules, None).err().unwrap_or_default()
    }

    /// Whether any rule must be evaluated (else every event takes the default path).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The path for `event` (a CloudEvent as JSON): the first rule that evaluates to
    /// `true`, else the default; `None` when neither.
    pub fn path_for(&self, event: &serde_json::Value) -> Option<&str> {
        if self.rules.is_empty() {
            return self.default.as_deref();
        }
        let mut context = Context::default();
        if context.add_variable("event", event.clone()).is_err() {
            return self.default.as_deref();
        }
        for (program, path) in &self.rules {
            // A rule that fails on this event (a missing field, a type mismatch) does not
            // match, as in Dapr; so does one the interpreter panics on (some macros over
            // values of the wrong type are not implemented by it).
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                program.execute(&context)
            }));
            if matches!(outcome, Ok(Ok(Value::Bool(true)))) {
                return Some(path);
            }
        }
        self.default.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(matches: &str, path: &str) -> RouteRule {
        RouteRule {
            matches: matches.into(),
            path: path.into(),
        }
    }

    #[test]
    fn first_matching_rule_wins_then_default() {
        let routes = Routes::compile(
            &[
                rule(r#"event.type == "order.express""#, "/express"),
                rule("event.data.amount > 100 && has(event.data.vip)", "/vip"),
                rule(
                    r#"event.source.startsWith("shop") || event.data.tags.contains("x")"#,
                    "/shop",
                ),
                rule(
                    r#"event.data.region in ["eu", "us"] && size(event.data.items) >= 2"#,
                    "/multi",
                ),
                rule(
                    r#"!(event.type.endsWith(".test")) && event.type != "skip""#,
                    "/not-test",
                ),
            ],
            Some("/default"),
        )
        .expect("compile");
        let event = |v: serde_json::Value| v;
        assert_eq!(
            routes.path_for(&event(
                json!({"type":"order.express","source":"x","data":{}})
            )),
            Some("/express")
        );
        assert_eq!(
            routes.path_for(&event(
                json!({"type":"a.test","source":"x","data":{"amount":150,"vip":true}})
            )),
            Some("/vip")
        );
        assert_eq!(
            routes.path_for(&event(
                json!({"type":"a.test","source":"shop-1","data":{"amount":5}})
            )),
            Some("/shop")
        );
        assert_eq!(
            routes.path_for(&event(
                json!({"type":"a.test","source":"y","data":{"region":"eu","items":[1,2]}})
            )),
            Some("/multi")
        );
        assert_eq!(
            routes.path_for(&event(json!({"type":"a.live","source":"y","data":{}}))),
            Some("/not-test")
        );
        assert_eq!(
            routes.path_for(&event(json!({"type":"b.test","source":"y","data":{}}))),
            Some("/default")
        );
    }

    #[test]
    fn an_empty_match_always_matches_and_a_failing_rule_does_not() {
        let routes = Routes::compile(
            &[
                rule("event.data.tags.exists(t, t == \"x\")", "/tagged"),
                rule("", "/catch-all"),
            ],
            None,
        )
        .expect("compile");
        assert_eq!(
            routes.path_for(&json!({"data": {"tags": ["x"]}})),
            Some("/tagged")
        );
        // `tags` is not a list: the interpreter fails (or panics) on the first rule.
        assert_eq!(
            routes.path_for(&json!({"data": {"tags": "x"}})),
            Some("/catch-all")
        );
    }

    #[test]
    fn no_match_and_no_default_is_none_and_bad_rules_are_refused() {
        let routes = Routes::compile(&[rule(r#"event.type == "x""#, "/x")], None).expect("compile");
        assert_eq!(routes.path_for(&json!({"type":"y"})), None);
        let errors = Routes::compile(&[rule("ok == 1", "/a"), rule("event.type ==", "/b")], None)
            .expect_err("bad rule");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 1);
    }
}
