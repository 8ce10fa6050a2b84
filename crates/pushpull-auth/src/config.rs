//! `[auth]`: the keys tokens are signed with, where tokens are read from, and the limits.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The settings of the auth layer.
///
/// ```toml
/// [auth]
/// issuer = "https://auth.example.com"     # optional: tokens must carry this `iss`
/// publish_rate = 100                      # publishes a second per token, on average
///
/// [[auth.keys]]                           # one or more; rotate by adding a key with a new kid
/// kid = "2026-11"
/// algorithm = "HS256"
/// secret_file = "/etc/pushpull/jwt-secret"
///
/// [[auth.keys]]
/// kid = "rsa-1"
/// algorithm = "RS256"
/// public_key_file = "/etc/pushpull/jwt-rsa.pub.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// The keys a token may be signed with. A token naming a `kid` is checked with that key
    /// only; one without is checked with the keys without a `kid` of its algorithm.
    pub keys: Vec<KeyConfig>,
    /// When set, tokens must carry this issuer (`iss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, tokens must carry this audience (`aud`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "pushpull_core::duration_text")]
    pub leeway: Duration,
    /// Whether tokens must expire (`exp`): on by default, as a token that never expires
    /// cannot be taken back.
    pub require_exp: bool,
    /// The cookie a token may come in (browsers' `EventSource` and `WebSocket` cannot set
    /// headers); empty turns cookies off.
    pub cookie: String,
    /// The query parameter a token may come in; empty turns it off. URLs end up in logs and
    /// browser history, so prefer the header or the cookie.
    pub query_param: String,
    /// Publishes a second one token may make, on average (over HTTP and WebSocket alike);
    /// `0` for no limit.
    pub publish_rate: f64,
    /// How many publishes a token may make at once above the rate.
    pub publish_burst: u32,
    /// Rights of requests that carry no token: `subscribe = ["public:*"]` makes those topics
    /// readable by anyone. Empty (the default): every request needs a token.
    pub anonymous: Rights,
    /// Key sets (JWKS) of identity providers, fetched over HTTPS and kept fresh: tokens they
    /// sign are checked with their keys, beside [`keys`](Self::keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwks: Vec<JwksConfig>,
}

/// `[[auth.jwks]]`: an identity provider's JSON Web Key Set (Keycloak, Auth0, any OIDC
/// issuer's `jwks_uri`).
///
/// The set is fetched at start and every `refresh`; a token naming a `kid` none of the keys has
/// fetches it again at once (at most every `min_refresh`), so a new key is taken up as soon as
/// the provider signs with it. A fetch that fails keeps the keys already fetched: the server
/// goes on checking tokens while the provider is down. Only signing keys of the algorithms
/// pushpull checks (RSA, EC P-256/P-384, Ed25519) are used; shared secrets (`oct`) never are.
///
/// ```toml
/// [[auth.jwks]]
/// url = "https://idp.example.com/realms/main/protocol/openid-connect/certs"
/// refresh = "5m"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JwksConfig {
    /// Where the set is: `https://…`; plain `http://` only to a loopback address (a sidecar).
    pub url: String,
    /// How often the set is fetched again.
    #[serde(with = "pushpull_core::duration_text")]
    pub refresh: Duration,
    /// The soonest a token with an unknown `kid` fetches the set again.
    #[serde(with = "pushpull_core::duration_text")]
    pub min_refresh: Duration,
    /// How long one fetch may take, connection included.
    #[serde(with = "pushpull_core::duration_text")]
    pub timeout: Duration,
    /// The largest set accepted, in bytes.
    pub max_bytes: usize,
    /// A PEM file of certificate authorities trusted for the provider, besides the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl JwksConfig {
    /// The set at `url`, with the default timings and limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
            ca_file: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            require_exp: true,
            cookie: "pushpull_token".into(),
            query_param: "access_token".into(),
            publish_rate: 100.0,
            publish_burst: 200,
            anonymous: Rights::default(),
            jwks: Vec::new(),
        }
    }
}

/// Rights, as in the token's `pushpull` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rights {
    /// Topic patterns it may publish to: `orders:42` (exact), `orders:*` (prefix), `*`.
    pub publish: Vec<String>,
    /// Topic patterns it may read (subscribe and fetch).
    pub subscribe: Vec<String>,
    /// Whether it may manage the server: the webhook API and metrics. Admin implies every
    /// publish and subscribe right.
    pub admin: bool,
}

/// One key tokens may be signed with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyConfig {
    /// The key id tokens name in their header (`kid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `HS256`, `HS384`, `HS512` (a shared secret), `RS256`, `RS384`, `RS512`, `PS256`,
    /// `PS384`, `PS512` (RSA), `ES256`, `ES384` (ECDSA) or `EdDSA` (Ed25519): the only
    /// algorithm accepted with this key.
    pub algorithm: String,
    /// For `HS*`: the secret, as text.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// For `HS*`: a file holding the secret (its bytes, trailing newline removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// For the others: a PEM file with the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

/// Never shows the secret.
impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .finish()
    }
}

impl KeyConfig {
    /// An `HS256` key with `secret`, named `kid`.
    pub fn hs256(kid: Option<&str>, secret: impl Into<String>) -> Self {
        Self {
            kid: kid.map(Into::into),
            algorithm: "HS256".into(),
            secret: Some(secret.into()),
            secret_file: None,
            public_key_file: None,
        }
    }
}
