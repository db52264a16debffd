//! JWT bearer tokens (`auth.mode = "jwt"`): RS256, ES256 or HS256, verified against the
//! configured public keys (PEM files), the keys of a JWKS file, or a shared secret from the
//! environment; expiry always checked, issuer and audience when configured. The principal
//! is a claim (`sub` by default); its rights come from `[[auth.principals]]` of that name,
//! or else from a rights claim in the token itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, Principal, SetupError};
use crate::config::JwtConfig;
use crate::model::pattern::TopicPattern;
use crate::model::sync::lock;

/// Most principals made from token claims that are kept (then the oldest are forgotten).
const MAX_CLAIMED: usize = 10_000;

/// Rights carried by a token.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClaimedRights {
    publish: Vec<String>,
    subscribe: Vec<String>,
    admin: bool,
    metrics: bool,
}

/// Verifies tokens and names their principals.
pub struct JwtVerifier {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    validation: Validation,
    principal_claim: String,
    rights_claim: Option<String>,
    claimed: Mutex<HashMap<String, Arc<Principal>>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("principal_claim", &self.principal_claim)
            .finish()
    }
}

fn setup(path: &str, message: impl Into<String>) -> SetupError {
    SetupError {
        path: format!("auth.jwt.{path}"),
        message: message.into(),
    }
}

impl JwtVerifier {
    /// The keys of `config`; `env` reads `hs256_secret_env`.
    pub fn new(
        config: &JwtConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let mut keys = Vec::new();
        for (i, file) in config.public_keys.iter().enumerate() {
            let pem = std::fs::read(file).map_err(|e| {
                setup(
                    &format!("public_keys[{i}]"),
                    format!("{}: {e}", file.display()),
                )
            })?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (Algorithm::RS256, k))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)))
                .map_err(|e| {
                    setup(
                        &format!("public_keys[{i}]"),
                        format!("not an RSA or EC public key: {e}"),
                    )
                })?;
            keys.push((None, key.0, key.1));
        }
        if let Some(file) = &config.jwks_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| setup("jwks_file", format!("{}: {e}", file.display())))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| setup("jwks_file", e.to_string()))?;
            for jwk in &set.keys {
                let Ok(key) = DecodingKey::from_jwk(jwk) else {
                    continue;
                };
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    _ => continue,
                };
                keys.push((jwk.common.key_id.clone(), algorithm, key));
            }
        }
        if let Some(var) = &config.hs256_secret_env {
            let secret = env(var).filter(|s| !s.is_empty()).ok_or_else(|| {
                setup(
                    "hs256_secret_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            keys.push((
                None,
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if keys.is_empty() {
            return Err(setup(
                "public_keys",
                "mode = \"jwt\" needs public_keys, jwks_file or hs256_secret_env",
            ));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256, Algorithm::ES256, Algorithm::HS256];
        validation.validate_exp = true;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            keys,
            validation,
            principal_claim: config.principal_claim.clone(),
            rights_claim: config.rights_claim.clone(),
            claimed: Mutex::new(HashMap::new()),
        })
    }

    /// The principal of `token`: verified with a key of its algorithm (and its `kid` when
    /// it names one), then named by its claim, with the rights of `configured` for that
    /// name or else of its rights claim (none when it has neither).
    pub fn verify(
        &self,
        token: &str,
        configured: impl Fn(&str) -> Option<Arc<Principal>>,
    ) -> Result<Arc<Principal>, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let claims = self
            .keys
            .iter()
            .filter(|(kid, algorithm, _)| {
                *algorithm == header.alg
                    && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
            })
            .find_map(|(_, _, key)| {
                let mut validation = self.validation.clone();
                validation.algorithms = vec![header.alg];
                jsonwebtoken::decode::<HashMap<String, Value>>(token, key, &validation).ok()
            })
            .ok_or(AuthError::Invalid)?
            .claims;
        let name = claims
            .get(&self.principal_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(AuthError::Invalid)?;
        if let Some(principal) = configured(name) {
            return Ok(principal);
        }
        let rights: ClaimedRights = self
            .rights_claim
            .as_ref()
            .and_then(|claim| claims.get(claim))
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_default();
        let mut claimed = lock(&self.claimed);
        if claimed.len() >= MAX_CLAIMED {
            claimed.clear();
        }
        // A name's rights are those of its latest token.
        let principal = Arc::new(Principal {
            name: name.to_string(),
            publish: compile(&rights.publish),
            subscribe: compile(&rights.subscribe),
            admin: rights.admin,
            metrics: rights.metrics || rights.admin,
            anonymous: false,
            quota: Arc::new(super::quota::Quota::new(0, 0)),
            max_subscriptions: crate::config::DEFAULT_MAX_SUBSCRIPTIONS,
            max_in_flight: 0,
        });
        claimed.insert(name.to_string(), principal.clone());
        Ok(principal)
    }
}

fn compile(patterns: &[String]) -> Vec<(String, TopicPattern)> {
    patterns
        .iter()
        .filter_map(|p| Some((p.clone(), TopicPattern::parse(p).ok()?)))
        .collect()
}
