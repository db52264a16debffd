//! A subscription compiled for delivery: its topic patterns and a Dapr app's routing rules,
//! made once from a checked spec.

use std::sync::Arc;

use crate::model::pattern::TopicPattern;
use crate::model::signing::SigningSecrets;
use crate::model::subscription::{Routes, SubscriptionSpec};
use crate::model::violation::Violation;

/// A subscription with its patterns (and a Dapr app's routing rules) compiled.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// What it was created from.
    pub spec: SubscriptionSpec,
    patterns: Vec<TopicPattern>,
    /// The routing rules of a Dapr app's subscription.
    pub routes: Option<Arc<Routes>>,
    /// The secrets its webhook deliveries are signed with (kept apart from the spec, which
    /// anyone who may read the subscription sees).
    pub secrets: Option<Arc<SigningSecrets>>,
    /// How many times it was rewound: a change restarts its delivery everywhere.
    pub rewinds: i64,
}

impl Subscription {
    /// Checks a spec and compiles it; every problem is listed with its path.
    pub fn new(spec: SubscriptionSpec) -> Result<Self, Vec<Violation>> {
        spec.check()?;
        let patterns = spec
            .topics
            .iter()
            .filter_map(|topic| TopicPattern::parse(topic).ok())
            .collect();
        let routes = match &spec.dapr {
            Some(target) => Some(Arc::new(
                Routes::compile(&target.rules, target.default_path.as_deref()).map_err(
                    |errors| {
                        errors
                            .into_iter()
                            .map(|(i, message)| Violation {
                                path: format!("/dapr/rules/{i}/match"),
                                message,
                            })
                            .collect::<Vec<_>>()
                    },
                )?,
            )),
            None => None,
        };
        Ok(Self {
            spec,
            patterns,
            routes,
            secrets: None,
            rewinds: 0,
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether an event of `topic` is for this subscription.
    pub fn matches(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Whether any topic of domain `domain` could match (for picking streams to read).
    pub fn may_match_domain(&self, domain: &str) -> bool {
        self.patterns.iter().any(|p| p.may_match_domain(domain))
    }

    /// Literal domains its patterns name (streams to create if missing).
    pub fn literal_domains(&self) -> Vec<String> {
        self.patterns
            .iter()
            .filter_map(|p| p.literal_domain())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::subscription::tests::spec;

    #[test]
    fn a_good_spec_compiles_and_matches() {
        let sub = Subscription::new(spec()).expect("valid");
        assert!(sub.matches("order.created"));
        assert!(sub.matches("payment.captured"));
        assert!(!sub.matches("payment.failed"));
        assert!(sub.may_match_domain("order"));
        assert!(sub.may_match_domain("payment"));
        assert_eq!(sub.literal_domains(), vec!["order".to_string()]);
    }
}
