//! The security sections of the config: who may call (`[auth]`, its principals and JWT
//! verification), the listener's TLS (`[server.tls]`), where webhooks may go
//! (`[webhooks]`) and the audit log (`[audit]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// Authentication and rights.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// `none` (every caller may do everything) or `token` (bearer tokens of
    /// `[[auth.principals]]`).
    pub mode: AuthMode,
    /// With `mode = "none"`, serving on an address that is not loopback is refused unless
    /// this is true.
    pub allow_anonymous: bool,
    /// `GET /v1/stats` answers without a token.
    pub open_metrics: bool,
    /// The callers of `mode = "token"` (and the rights of `mode = "jwt"` principals).
    pub principals: Vec<PrincipalConfig>,
    /// How JWT bearer tokens are verified (`mode = "jwt"`).
    pub jwt: JwtConfig,
}

/// JWT verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// PEM files of RSA (RS256) or EC P-256 (ES256) public keys.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file (`{"keys":[…]}`) of public keys, chosen by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// An environment variable holding an HS256 shared secret.
    pub hs256_secret_env: Option<String>,
    /// The `iss` tokens must carry, if any.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry, if any.
    pub audience: Option<String>,
    /// The claim naming the principal.
    pub principal_claim: String,
    /// A claim carrying rights (`{"publish":[…],"subscribe":[…],"admin":false,"metrics":false}`)
    /// for principals not listed in `[[auth.principals]]`.
    pub rights_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            public_keys: Vec::new(),
            jwks_file: None,
            hs256_secret_env: None,
            issuer: None,
            audience: None,
            principal_claim: "sub".into(),
            rights_claim: None,
        }
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: every caller is the anonymous admin.
    #[default]
    None,
    /// `Authorization: Bearer <token>` (or Dapr's `dapr-api-token`), checked against the
    /// SHA-256 of each principal's token.
    Token,
    /// `Authorization: Bearer <JWT>`, verified with `[auth.jwt]`.
    Jwt,
}

/// How many subscriptions a principal may own when its block does not say.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 100;

/// One caller and its rights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PrincipalConfig {
    /// Its name (recorded as the owner of its subscriptions).
    pub name: String,
    /// The SHA-256 of its token, in hex (the token itself is never in the file).
    pub token_sha256: Option<String>,
    /// Or: an environment variable holding the token.
    pub token_env: Option<String>,
    /// Topic patterns it may publish to.
    pub publish: Vec<String>,
    /// Topic patterns its subscriptions may read.
    pub subscribe: Vec<String>,
    /// Manages every subscription, replays and purges any DLQ, reads stats.
    pub admin: bool,
    /// Reads `GET /v1/stats`.
    pub metrics: bool,
    /// Most events it may publish per second (0: no limit); beyond, 429 with Retry-After.
    pub publish_events_per_s: u32,
    /// Most bytes of request bodies it may publish per second (0: no limit).
    pub publish_bytes_per_s: u32,
    /// Most subscriptions it may own ([`DEFAULT_MAX_SUBSCRIPTIONS`] unless set; 0: no
    /// limit).
    pub max_subscriptions: usize,
    /// Largest `max_in_flight` its subscriptions may ask for (0: no limit).
    pub max_in_flight: usize,
    /// Client certificate names (a DNS name of its subject alternative names, or its
    /// subject's common name) that authenticate as this principal over mTLS.
    pub cert_names: Vec<String>,
}

impl Default for PrincipalConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            token_sha256: None,
            token_env: None,
            publish: Vec::new(),
            subscribe: Vec::new(),
            admin: false,
            metrics: false,
            publish_events_per_s: 0,
            publish_bytes_per_s: 0,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_in_flight: 0,
            cert_names: Vec::new(),
        }
    }
}

/// The listener's TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM file of the certificate chain (reloaded on SIGHUP and when it changes).
    pub cert: PathBuf,
    /// PEM file of the private key.
    pub key: PathBuf,
    /// PEM file of the CA that client certificates must chain to (mTLS); none: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate (else they may use a token).
    pub require_client_cert: bool,
}

/// Where webhooks may be sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhooksConfig {
    /// Internal hosts, addresses and networks (CIDR) webhooks may still go to; every other
    /// internal address (loopback, link-local, private, unique-local …) is refused.
    pub allow: Vec<String>,
    /// A PEM file of CA certificates `https://` endpoints may chain to, besides the
    /// system's roots.
    pub ca: Option<PathBuf>,
}

/// The audit log: actions and refusals, kept and trimmed apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    /// How long entries are kept.
    pub retention: ConfigDuration,
    /// At most about this many actions (admitted changes and reads of the event store) are
    /// kept. Refusals never count against it.
    pub max_entries: u64,
    /// At most about this many refusal entries are kept, apart from the actions.
    pub max_refusals: u64,
    /// Refusals are counted per caller and reason over this interval: the first is written
    /// in full, the others in one count at its end.
    pub refusal_interval: ConfigDuration,
    /// Most callers and reasons counted apart in one interval; refusals of further ones
    /// are counted together (principal `*`).
    pub refusal_callers: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: "365d".into(),
            max_entries: 1_000_000,
            max_refusals: 1_000_000,
            refusal_interval: "10s".into(),
            refusal_callers: 100,
        }
    }
}
