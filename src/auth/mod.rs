//! Who is calling and what they may do. A caller proves its identity with a bearer token;
//! evrouter keeps only each token's SHA-256 and compares in constant time. A principal's
//! rights are topic patterns it may publish to and read (through its subscriptions), and
//! two flags: `admin` (every subscription and DLQ) and `metrics` (stats). With
//! `mode = "none"` every caller is the anonymous admin, as before authentication existed.
//!
//! This floor sits on `model` and `config`; `ingress` asks it about every request.

pub mod jwt;
pub mod quota;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, AuthMode, PrincipalConfig};
use crate::model::pattern::TopicPattern;
use quota::Quota;

/// A caller evrouter knows, with its rights.
#[derive(Debug)]
pub struct Principal {
    /// Its name, recorded as the owner of the subscriptions it creates.
    pub name: String,
    publish: Vec<(String, TopicPattern)>,
    subscribe: Vec<(String, TopicPattern)>,
    /// Manages every subscription and DLQ, reads stats.
    pub admin: bool,
    /// Reads stats.
    pub metrics: bool,
    /// The caller of `mode = "none"`: may do everything, owns nothing.
    pub anonymous: bool,
    /// Its publish rate limits.
    pub quota: Arc<Quota>,
    /// Most subscriptions it may own (0: no limit).
    pub max_subscriptions: usize,
    /// Largest `max_in_flight` its subscriptions may ask for (0: no limit).
    pub max_in_flight: usize,
}

/// Why a principal may not do something: the message names what refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Principal {
    /// The caller when authentication is off: every right.
    pub fn anonymous() -> Self {
        let everything = || vec![(">".to_string(), TopicPattern::parse(">").expect("`>`"))];
        Self {
            name: "anonymous".into(),
            publish: everything(),
            subscribe: everything(),
            admin: true,
            metrics: true,
            anonymous: true,
            quota: Arc::new(Quota::new(0, 0)),
            max_subscriptions: 0,
            max_in_flight: 0,
        }
    }

    /// May it publish to `topic`?
    pub fn may_publish(&self, topic: &str) -> Result<(), Denied> {
        if self.publish.iter().any(|(_, p)| p.matches(topic)) {
            return Ok(());
        }
        Err(Denied(format!(
            "principal `{}` may not publish to `{topic}`: its publish patterns are {}",
            self.name,
            list(&self.publish)
        )))
    }

    /// May its subscriptions read every topic `pattern` matches? An admin's may read any.
    pub fn may_subscribe(&self, pattern: &str) -> Result<(), Denied> {
        if self.admin {
            return Ok(());
        }
        let refused = || {
            Denied(format!(
                "principal `{}` may not subscribe to `{pattern}`: its subscribe patterns are {}",
                self.name,
                list(&self.subscribe)
            ))
        };
        let wanted = TopicPattern::parse(pattern).map_err(|_| refused())?;
        if self.subscribe.iter().any(|(_, p)| p.covers(&wanted)) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// The topics it may read, as POSIX regular expressions for a database to filter by;
    /// none for an admin, who may read every topic.
    pub fn readable_topics(&self) -> Option<Vec<String>> {
        (!self.admin).then(|| {
            self.subscribe
                .iter()
                .map(|(_, p)| p.to_posix_regex())
                .collect()
        })
    }

    /// May it manage a subscription owned by `owner` (none: from config or a Dapr app)?
    pub fn may_manage(&self, owner: Option<&str>) -> Result<(), Denied> {
        if self.admin || owner == Some(self.name.as_str()) {
            return Ok(());
        }
        Err(Denied(match owner {
            Some(owner) => format!(
                "the subscription belongs to `{owner}`; principal `{}` is not an admin",
                self.name
            ),
            None => format!(
                "the subscription has no owner (it comes from evrouter's config or a Dapr app, or was created while authentication was off); principal `{}` is not an admin",
                self.name
            ),
        }))
    }

    /// An admin-only action.
    pub fn must_be_admin(&self, what: &str) -> Result<(), Denied> {
        if self.admin {
            Ok(())
        } else {
            Err(Denied(format!(
                "{what} needs an admin; principal `{}` is not one",
                self.name
            )))
        }
    }

    /// The owner a subscription it creates records.
    pub fn owner(&self) -> Option<String> {
        (!self.anonymous).then(|| self.name.clone())
    }
}

fn list(patterns: &[(String, TopicPattern)]) -> String {
    if patterns.is_empty() {
        return "none".into();
    }
    patterns
        .iter()
        .map(|(text, _)| format!("`{text}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a request has no principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was given.
    #[error("a bearer token is required")]
    Missing,
    /// The credential matches no principal.
    #[error("the token is not valid")]
    Invalid,
}

/// Why the principals could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SetupError {
    /// The key at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Tells callers apart by their tokens.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    jwt: Option<jwt::JwtVerifier>,
    by_name: Vec<(String, Arc<Principal>)>,
    principals: Vec<([u8; 32], Arc<Principal>)>,
    by_certificate: Vec<(String, Arc<Principal>)>,
    anonymous: Arc<Principal>,
    open_metrics: bool,
}

impl Authenticator {
    /// The principals of a validated config; `env` reads the variables named by
    /// `token_env`.
    pub fn new(
        config: &AuthConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let mut principals = Vec::with_capacity(config.principals.len());
        let mut by_certificate = Vec::new();
        let mut by_name = Vec::new();
        for (i, p) in config.principals.iter().enumerate() {
            let made = Arc::new(principal(p));
            by_name.push((p.name.clone(), made.clone()));
            for name in &p.cert_names {
                by_certificate.push((name.to_ascii_lowercase(), made.clone()));
            }
            if p.token_sha256.is_some() || p.token_env.is_some() {
                principals.push((token_hash(i, p, &env)?, made));
            }
        }
        let jwt = match config.mode {
            AuthMode::Jwt => Some(jwt::JwtVerifier::new(&config.jwt, &env)?),
            _ => None,
        };
        Ok(Self {
            mode: config.mode,
            jwt,
            by_name,
            principals,
            by_certificate,
            anonymous: Arc::new(Principal::anonymous()),
            open_metrics: config.open_metrics,
        })
    }

    /// Authentication off: every caller is the anonymous admin.
    pub fn open() -> Self {
        Self {
            mode: AuthMode::None,
            jwt: None,
            by_name: Vec::new(),
            principals: Vec::new(),
            by_certificate: Vec::new(),
            anonymous: Arc::new(Principal::anonymous()),
            open_metrics: true,
        }
    }

    /// The principal evrouter publishes with on behalf of a configured part (a Dapr app's
    /// dead-letter topics): the anonymous one when authentication is off, else the
    /// principal named, if there is one of that name.
    pub fn acting_as(&self, name: Option<&str>) -> Option<Arc<Principal>> {
        if !self.required() {
            return Some(self.anonymous.clone());
        }
        let name = name?;
        self.by_name
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }

    /// Whether callers must authenticate.
    pub fn required(&self) -> bool {
        self.mode != AuthMode::None
    }

    /// Whether stats answer without a token.
    pub fn open_metrics(&self) -> bool {
        self.open_metrics || !self.required()
    }

    /// The principal a verified client certificate stands for: the first of its names
    /// (DNS names, then the subject's common name) that a principal lists in `cert_names`.
    pub fn authenticate_certificate(&self, names: &[String]) -> Option<Arc<Principal>> {
        names.iter().find_map(|name| {
            let name = name.to_ascii_lowercase();
            self.by_certificate
                .iter()
                .find(|(listed, _)| *listed == name)
                .map(|(_, principal)| principal.clone())
        })
    }

    /// The principal of a bearer token. Every principal's hash is compared, in constant
    /// time, whatever matches first.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        if !self.required() {
            return Ok(self.anonymous.clone());
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        if let Some(jwt) = &self.jwt {
            return jwt.verify(token, |name| {
                self.by_name
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| p.clone())
            });
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, principal) in &self.principals {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }
}

fn token_hash(
    index: usize,
    config: &PrincipalConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<[u8; 32], SetupError> {
    let at = |key: &str| format!("auth.principals[{index}].{key}");
    if let Some(var) = &config.token_env {
        let token = env(var)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SetupError {
                path: at("token_env"),
                message: format!("environment variable {var} is not set"),
            })?;
        return Ok(Sha256::digest(token.as_bytes()).into());
    }
    let text = config.token_sha256.as_deref().unwrap_or_default();
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|_| SetupError {
        path: at("token_sha256"),
        message: "must be the 64 hex digits of the token's SHA-256".into(),
    })?;
    Ok(hash)
}

fn principal(config: &PrincipalConfig) -> Principal {
    let compile = |patterns: &[String]| {
        patterns
            .iter()
            .filter_map(|p| Some((p.clone(), TopicPattern::parse(p).ok()?)))
            .collect()
    };
    Principal {
        name: config.name.clone(),
        publish: compile(&config.publish),
        subscribe: compile(&config.subscribe),
        admin: config.admin,
        metrics: config.metrics || config.admin,
        anonymous: false,
        quota: Arc::new(Quota::new(
            config.publish_events_per_s,
            config.publish_bytes_per_s,
        )),
        max_subscriptions: config.max_subscriptions,
        max_in_flight: config.max_in_flight,
    }
}

/// The hex SHA-256 of a token, as `token_sha256` takes it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Token,
            principals: vec![
                PrincipalConfig {
                    name: "order-service".into(),
                    token_sha256: Some(hash_token("order-secret")),
                    publish: vec!["order.>".into()],
                    subscribe: vec!["payment.>".into()],
                    ..PrincipalConfig::default()
                },
                PrincipalConfig {
                    name: "ops".into(),
                    token_env: Some("OPS_TOKEN".into()),
                    admin: true,
                    ..PrincipalConfig::default()
                },
            ],
            ..AuthConfig::default()
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "OPS_TOKEN").then(|| "ops-secret".to_string())
    }

    #[test]
    fn tokens_name_their_principals() {
        let auth = Authenticator::new(&config(), env).expect("setup");
        let order = auth.authenticate(Some("order-secret")).expect("order");
        assert_eq!(order.name, "order-service");
        assert_eq!(
            auth.authenticate(Some("ops-secret")).expect("ops").name,
            "ops"
        );
        assert_eq!(
            auth.authenticate(Some("guess")).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(auth.authenticate(Some("")).unwrap_err(), AuthError::Missing);
    }

    #[test]
    fn rights_follow_the_patterns() {
        let auth = Authenticator::new(&config(), env).expect("setup");
        let order = auth.authenticate(Some("order-secret")).expect("order");
        assert!(order.may_publish("order.created").is_ok());
        let denied = order.may_publish("payment.captured").unwrap_err();
        assert!(denied.0.contains("`order.>`"), "{denied}");
        assert!(order.may_subscribe("payment.*").is_ok());
        assert!(order.may_subscribe("payment.>").is_ok());
        assert!(order.may_subscribe(">").is_err());
        assert!(order.may_subscribe("order.created").is_err());
        assert!(order.may_manage(Some("order-service")).is_ok());
        assert!(order.may_manage(Some("payment-service")).is_err());
        // An ownerless subscription is not claimed to come from the config: it may have
        // been made while authentication was off.
        let ownerless = order.may_manage(None).unwrap_err();
        assert!(
            ownerless.0.contains("authentication was off"),
            "{ownerless}"
        );
        assert!(order.must_be_admin("purging a DLQ").is_err());
        let ops = auth.authenticate(Some("ops-secret")).expect("ops");
        assert!(ops.may_manage(Some("order-service")).is_ok() && ops.metrics);
    }

    #[test]
    fn a_missing_token_variable_names_its_key() {
        let err = Authenticator::new(&config(), |_| None).unwrap_err();
        assert_eq!(err.path, "auth.principals[1].token_env");
    }

    #[test]
    fn without_authentication_everyone_is_the_anonymous_admin() {
        let auth = Authenticator::open();
        let anyone = auth.authenticate(None).expect("anonymous");
        assert!(anyone.admin && anyone.anonymous && anyone.owner().is_none());
        assert!(anyone.may_publish("x.y").is_ok() && anyone.may_subscribe("re:.*").is_ok());
    }
}
