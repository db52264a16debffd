//! The secrets `run` reads when it starts, from files and the environment: the Dapr apps'
//! API tokens, the Redis password and the files of TLS to Redis; and the check
//! `check-config` makes that they are there.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::{self, Config};
use crate::{store, RunError};

/// A secret that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CredentialError {
    /// The config key that names it.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The secrets `run` reads from the environment (principals' and apps' tokens, the JWT
/// secret) are there: `check-config` fails where serving would.
pub fn check_secrets(config: &Config) -> Result<(), RunError> {
    Authenticator::new(&config.auth, |var| std::env::var(var).ok())?;
    app_tokens(config)?;
    Ok(())
}

/// The API tokens of the Dapr apps that have one, by app id, from the environment.
pub(crate) fn app_tokens(
    config: &Config,
) -> Result<std::collections::HashMap<String, Arc<str>>, CredentialError> {
    let mut tokens = std::collections::HashMap::new();
    for (i, app) in config.dapr.apps.iter().enumerate() {
        let Some(var) = &app.app_api_token_env else {
            continue;
        };
        let token = std::env::var(var)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| CredentialError {
                path: format!("dapr.apps[{i}].app_api_token_env"),
                message: format!("environment variable {var} is not set"),
            })?;
        tokens.insert(app.id.clone(), Arc::from(token));
    }
    Ok(tokens)
}

/// The Redis password from `EVR_REDIS_PASSWORD`, else from `redis.password_file` (its
/// first line); none means the URL's own, if any.
pub(crate) fn redis_password(config: &Config) -> Result<Option<String>, CredentialError> {
    if let Ok(password) = std::env::var(config::REDIS_PASSWORD_ENV) {
        return Ok(Some(password));
    }
    let Some(file) = &config.redis.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|e| CredentialError {
        path: "redis.password_file".into(),
        message: format!("{}: {e}", file.display()),
    })?;
    Ok(text.lines().next().map(str::to_string))
}

/// The files of TLS to Redis, read.
pub(crate) fn redis_tls(config: &Config) -> Result<store::RedisTls, CredentialError> {
    let read = |path: &str, file: &std::path::Path| {
        std::fs::read(file).map_err(|e| CredentialError {
            path: path.into(),
            message: format!("{}: {e}", file.display()),
        })
    };
    let ca = match &config.redis.tls_ca {
        Some(file) => Some(read("redis.tls_ca", file)?),
        None => None,
    };
    let client = match (&config.redis.tls_client_cert, &config.redis.tls_client_key) {
        (Some(cert), Some(key)) => Some((
            read("redis.tls_client_cert", cert)?,
            read("redis.tls_client_key", key)?,
        )),
        _ => None,
    };
    Ok(store::RedisTls { ca, client })
}
