//! Checking a token and turning its claims into a [`Grant`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pushpull_core::{Error, ErrorKind};
use pushpull_http::{Grant, RateLimit, Revocations, TopicPattern};
use serde::Deserialize;

use crate::config::{AuthConfig, KeyConfig, Rights};
use crate::jwks::JwksSource;
use crate::refusal::Refusal;

/// Checks tokens against the configured keys. Cheap to share (`Arc`).
pub struct Verifier {
    keys: Vec<Key>,
    /// The identity providers' key sets.
    jwks: Vec<Arc<JwksSource>>,
    anonymous: Option<Grant>,
    rate: Option<(f64, u32)>,
    /// Each token's (subject's) publish allowance, shared by all its requests; in shards by
    /// subject, so concurrent requests of different subjects rarely wait on one lock.
    rates: Box<[Mutex<Allowances>]>,
    inserted: AtomicUsize,
    pub(crate) cookie: Option<String>,
    pub(crate) query_param: Option<String>,
    /// The tokens and subjects refused before their expiry.
    revocations: Revocations,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (k.kid.as_deref(), k.algorithm)).collect();
        f.debug_struct("Verifier").field("keys", &kids).finish_non_exhaustive()
    }
}

pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
    pub(crate) validation: Validation,
}

/// The claims pushpull reads: `sub`, `exp` and its own `pushpull` claim (the registered
/// claims `iss`, `aud`, `nbf` are checked by the validation when configured).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    pushpull: Rights,
}

impl Verifier {
    /// A verifier of `config`; errors name the bad key.
    pub fn new(config: &AuthConfig) -> Result<Self, Error> {
        Self::with_rules(config, &pushpull_core::TopicRules::default())
    }

    /// A verifier of `config` whose requests without a token may also do what the `[[topics]]`
    /// `rules` open to them, and may not do what they close.
    pub fn with_rules(
        config: &AuthConfig,
        rules: &pushpull_core::TopicRules,
    ) -> Result<Self, Error> {
        if config.keys.is_empty() && config.jwks.is_empty() {
            return Err(config_error(
                "auth: at least one key is needed ([[auth.keys]] or [[auth.jwks]])".into(),
            ));
        }
        let keys = config
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| load_key(i, key, config))
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = config
            .jwks
            .iter()
            .enumerate()
            .map(|(i, jwks)| {
                JwksSource::new(&format!("auth.jwks[{i}]"), jwks, config).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for source in &jwks {
            JwksSource::spawn_refresher(source);
        }
        let anonymous = &config.anonymous;
        let none =
            anonymous.publish.is_empty() && anonymous.subscribe.is_empty() && !anonymous.admin;
        let anonymous = if none && !rules.opens_to_anonymous() {
            None
        } else {
            let mut grant = grant(anonymous, None, None, None)
                .map_err(|e| config_error(format!("auth.anonymous: {}", e.message())))?;
            grant.anonymous = true;
            grant.anonymous_rules = (!rules.is_empty()).then(|| rules.clone());
            Some(grant)
        };
        if !(config.publish_rate >= 0.0 && config.publish_rate.is_finite()) {
            return Err(config_error("auth.publish_rate: must be 0 or more".into()));
        }
        let rate =
            (config.publish_rate > 0.0).then_some((config.publish_rate, config.publish_burst));
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        Ok(Self {
            keys,
            jwks,
            anonymous,
            rate,
            rates: (0..RATE_SHARDS).map(|_| Mutex::default()).collect(),
            inserted: AtomicUsize::new(0),
            cookie: nonempty(&config.cookie),
            query_param: nonempty(&config.query_param),
            revocations: Revocations::new(),
        })
    }

    /// The rights of a request without a token, if anonymous requests have any.
    pub fn anonymous(&self) -> Option<&Grant> {
        self.anonymous.as_ref()
    }

    /// Checks `token` (signature, algorithm, expiry, issuer, audience) and returns its rights.
    pub fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::invalid_token(format!("the token cannot be read: {e}")))?;
        let fetched: Vec<Arc<Vec<Key>>> = self.jwks.iter().map(|source| source.keys()).collect();
        let all = self.keys.iter().chain(fetched.iter().flat_map(|set| set.iter()));
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => all.filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => all.filter(|k| k.kid.is_none()).collect(),
        };
        if candidates.is_empty() {
            let why = match &header.kid {
                Some(kid) => format!("no key has the kid {kid:?}"),
                None => "the token names no kid and every key has one".into(),
            };
            return Err(Refusal::invalid_token(why));
        }
        let Some(key) = candidates.iter().find(|k| k.algorithm == header.alg) else {
            return Err(Refusal::invalid_token(format!(
                "the token is signed with {:?}, which its key does not allow",
                header.alg
            )));
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| Refusal::invalid_token(describe(&e)))?;
        let claims = data.claims;
        let expires = claims.exp.map(|exp| UNIX_EPOCH + Duration::from_secs(exp));
        // One allowance per subject (or per token when it names none).
        let who = claims.sub.clone().unwrap_or_else(|| {
            token.rsplit('.').next().unwrap_or(token).chars().take(43).collect()
        });
        let rate = self.rate.map(|(rate, burst)| self.allowance(who, rate, burst));
        let mut grant = grant(&claims.pushpull, claims.sub, expires, rate)
            .map_err(|e| Refusal::invalid_token(format!("the pushpull claim: {}", e.message())))?;
        grant.token_id = claims.jti;
        grant.issued_at = claims.iat.map(|iat| UNIX_EPOCH + Duration::from_secs(iat));
        grant.revocations = Some(self.revocations.clone());
        if grant.is_revoked() {
            return Err(Refusal::invalid_token("the token was revoked"));
        }
        Ok(grant)
    }

    /// The revocations this verifier enforces: revoking here refuses the tokens at once and
    /// ends what they hold open.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Whether `token` names a `kid` that no key has while a key set may be fetched again for
    /// it: the provider may have started signing with a new key.
    pub(crate) fn wants_fresh_keys(&self, token: &str) -> bool {
        if self.jwks.is_empty() {
            return false;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
        let Some(kid) = header.kid else { return false };
        let known = |key: &Key| key.kid.as_deref() == Some(kid.as_str());
        !self.keys.iter().any(known)
            && !self.jwks.iter().any(|source| source.keys().iter().any(known))
            && self.jwks.iter().any(|source| source.may_refresh())
    }

    /// Fetches every key set again (each at most every `min_refresh`).
    pub(crate) async fn refresh_keys(&self) {
        futures::future::join_all(self.jwks.iter().map(|source| source.refresh(true))).await;
    }

    fn allowance(&self, who: String, rate: f64, burst: u32) -> Arc<RateLimit> {
        let shard = {
            use std::hash::BuildHasher;
            static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
                std::sync::OnceLock::new();
            (SEED.get_or_init(Default::default).hash_one(&who) % RATE_SHARDS as u64) as usize
        };
        let mut rates = self.rates[shard].lock().expect("rates lock");
        if let Some(existing) = rates.get(&who) {
            return existing.clone();
        }
        // Forget full buckets now and then, so the map holds only recent publishers.
        if self.inserted.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            rates.retain(|_, limit| Arc::strong_count(limit) > 1 || !limit.is_idle());
        }
        rates.entry(who).or_insert_with(|| Arc::new(RateLimit::new(rate, burst))).clone()
    }
}

impl pushpull_http::CheckToken for Verifier {
    fn check_token(&self, token: &str) -> Result<Grant, Error> {
        self.verify(token).map_err(|refusal| Error::new(refusal.kind(), refusal.message))
    }
}

/// One shard of the publish allowances, by subject.
type Allowances = HashMap<String, Arc<RateLimit>>;

/// Shards of the publish-allowance map.
const RATE_SHARDS: usize = 32;

/// The grant of `rights`.
fn grant(
    rights: &Rights,
    subject: Option<String>,
    expires: Option<SystemTime>,
    publish_rate: Option<Arc<RateLimit>>,
) -> Result<Grant, Error> {
    let parse = |list: &[String]| {
        list.iter().map(|p| TopicPattern::parse(p)).collect::<Result<Vec<_>, _>>()
    };
    Ok(Grant {
        subject,
        publish: parse(&rights.publish)?,
        subscribe: parse(&rights.subscribe)?,
        admin: rights.admin,
        expires,
        publish_rate,
        ..Grant::default()
    })
}

fn load_key(index: usize, config: &KeyConfig, auth: &AuthConfig) -> Result<Key, Error> {
    let name = match &config.kid {
        Some(kid) => format!("auth.keys[{index}] ({kid})"),
        None => format!("auth.keys[{index}]"),
    };
    let algorithm = Algorithm::from_str(&config.algorithm).map_err(|_| {
        config_error(format!(
            "{name}.algorithm: {:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA",
            config.algorithm
        ))
    })?;
    let read = |path: &std::path::PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            config_error(format!("{name}.{what}: cannot read {}: {e}", path.display()))
        })
    };
    let pem_error =
        |e: jsonwebtoken::errors::Error| config_error(format!("{name}.public_key_file: {e}"));
    let key = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = match (&config.secret, &config.secret_file) {
                (Some(secret), None) => secret.as_bytes().to_vec(),
                (None, Some(path)) => {
                    let mut bytes = read(path, "secret_file")?;
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    bytes
                }
                _ => {
                    return Err(config_error(format!(
                        "{name}: an {} key needs exactly one of secret and secret_file",
                        config.algorithm
                    )));
                }
            };
            if secret.len() < 32 {
                return Err(config_error(format!(
                    "{name}: the secret has {} bytes; use at least 32 random bytes",
                    secret.len()
                )));
            }
            DecodingKey::from_secret(&secret)
                .map_err(|e| config_error(format!("{name}: the secret cannot be used: {e}")))?
        }
        _ => {
            let Some(path) = &config.public_key_file else {
                return Err(config_error(format!(
                    "{name}: an {} key needs public_key_file (PEM)",
                    config.algorithm
                )));
            };
            if config.secret.is_some() || config.secret_file.is_some() {
                return Err(config_error(format!(
                    "{name}: an {} key takes public_key_file, not a secret",
                    config.algorithm
                )));
            }
            let pem = read(path, "public_key_file")?;
            match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(pem_error)?
        }
    };
    Ok(Key { kid: config.kid.clone(), algorithm, key, validation: validation(algorithm, auth) })
}

/// How tokens signed with `algorithm` are checked: expiry, not-before, issuer, audience.
pub(crate) fn validation(algorithm: Algorithm, auth: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = auth.leeway.as_secs();
    validation.validate_nbf = true;
    validation.required_spec_claims.clear();
    if auth.require_exp {
        validation.required_spec_claims.insert("exp".into());
    }
    validation.validate_exp = true;
    match &auth.issuer {
        Some(issuer) => validation.set_issuer(&[issuer]),
        None => validation.iss = None,
    }
    match &auth.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation
}

/// One line saying why a token was refused, never the token itself.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as Jwt;
    match error.kind() {
        Jwt::ExpiredSignature => "the token has expired".into(),
        Jwt::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        Jwt::InvalidSignature => "the token's signature does not match its key".into(),
        Jwt::InvalidIssuer => "the token's issuer (iss) is not the one expected".into(),
        Jwt::InvalidAudience => "the token's audience (aud) is not the one expected".into(),
        Jwt::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        Jwt::InvalidAlgorithm => "the token's algorithm is not the key's".into(),
        other => format!("the token is not valid: {other:?}"),
    }
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}
