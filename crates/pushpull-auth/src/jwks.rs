//! Key sets fetched from identity providers (`[[auth.jwks]]`), kept fresh in the background.

use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use pushpull_core::{Error, ErrorKind};
use pushpull_http::{HttpClient, HttpClientConfig};

use crate::config::{AuthConfig, JwksConfig};
use crate::verify::{Key, validation};

/// One provider's key set: the keys of the last good fetch, and how to fetch again.
pub(crate) struct JwksSource {
    config: JwksConfig,
    /// `/path?query` of the set on the client's origin.
    path: String,
    client: HttpClient,
    auth: AuthConfig,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the last fetch started, to space the fetches an unknown `kid` asks for.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; a request that waits for one shares its outcome.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource").field("url", &self.config.url).finish_non_exhaustive()
    }
}

impl JwksSource {
    /// A source for `config` (`name` is its place in the config, for errors); fetches nothing
    /// yet.
    pub(crate) fn new(name: &str, config: &JwksConfig, auth: &AuthConfig) -> Result<Self, Error> {
        let bad = |why: String| Error::new(ErrorKind::Config, format!("{name}.{why}"));
        let uri: http::Uri = config
            .url
            .parse()
            .map_err(|e| bad(format!("url: {:?} is not a URL: {e}", config.url)))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let loopback = host == "localhost"
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            Some("http") => {
                return Err(bad(format!(
                    "url: {:?}: keys must come over https:// (plain http only from a loopback \
                     address)",
                    config.url
                )));
            }
            _ => return Err(bad(format!("url: {:?} must start with https://", config.url))),
        }
        for (key, value) in [("refresh", config.refresh), ("timeout", config.timeout)] {
            if value.is_zero() {
                return Err(bad(format!("{key}: must be more than zero")));
            }
        }
        if config.max_bytes == 0 {
            return Err(bad("max_bytes: must be more than zero".into()));
        }
        let origin =
            format!("{}://{}", uri.scheme_str().unwrap_or("https"), uri.authority().unwrap());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut client_config = HttpClientConfig::endpoint(
            config.timeout,
            config.ca_file.clone(),
            pushpull_core::BearerToken::none(),
        );
        client_config.connect_timeout = config.timeout;
        client_config.max_response_bytes = config.max_bytes;
        let client = HttpClient::new(&origin, "jwks", client_config)
            .map_err(|e| bad(format!("url: {}", e.message())))?;
        Ok(Self {
            config: config.clone(),
            path,
            client,
            auth: auth.clone(),
            keys: RwLock::default(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The keys of the last good fetch.
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().expect("jwks keys lock").clone()
    }

    /// Whether a request with an unknown `kid` should wait for a fetch: one is under way (the
    /// first, at start), or none started within `min_refresh`.
    pub(crate) fn may_refresh(&self) -> bool {
        if self.fetching.try_lock().is_err() {
            return true;
        }
        let last = *self.last_attempt.lock().expect("jwks attempt lock");
        last.is_none_or(|at| at.elapsed() >= self.config.min_refresh)
    }

    /// Fetches the set again, unless another fetch is under way (then waits for that one) or,
    /// with `spaced`, one started within `min_refresh`. A failed fetch keeps the keys there are.
    pub(crate) async fn refresh(&self, spaced: bool) {
        let started = Instant::now();
        let _one = self.fetching.lock().await;
        {
            let mut last = self.last_attempt.lock().expect("jwks attempt lock");
            // Another fetch ran while this one waited: its outcome stands.
            if last.is_some_and(|at| at >= started) {
                return;
            }
            if spaced && last.is_some_and(|at| at.elapsed() < self.config.min_refresh) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %self.config.url, keys = keys.len(), "fetched the key set");
                *self.keys.write().expect("jwks keys lock") = Arc::new(keys);
            }
            Err(error) => {
                let kept = self.keys().len();
                tracing::warn!(
                    url = %self.config.url, %error, kept,
                    "cannot fetch the key set; checking tokens with the keys fetched before"
                );
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, Error> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(self.client.url(&self.path))
            .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::new(ErrorKind::Config, format!("the request: {e}")))?;
        let response = self.client.send(request, self.config.timeout).await?;
        if response.status() != StatusCode::OK {
            return Err(Error::new(
                ErrorKind::Backend,
                format!("the provider answered {}", response.status()),
            ));
        }
        let body = self.client.read_body(response, self.config.timeout).await?;
        parse_set(&body, &self.auth)
    }

    /// Fetches now and then every `refresh` (sooner after a failure), for as long as the
    /// source is in use.
    pub(crate) fn spawn_refresher(source: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a verifier made outside one): keys are fetched on demand only.
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(source);
        runtime.spawn(async move {
            loop {
                let Some(source) = weak.upgrade() else { return };
                source.refresh(false).await;
                let wait = if source.keys().is_empty() {
                    source.config.min_refresh.min(source.config.refresh).max(Duration::from_secs(1))
                } else {
                    source.config.refresh
                };
                drop(source);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// The usable keys of a JWK Set document: signing keys of the algorithms pushpull checks.
/// Keys it cannot use are passed over (and logged), so one odd key does not hide the others.
fn parse_set(body: &[u8], auth: &AuthConfig) -> Result<Vec<Key>, Error> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| {
        Error::new(ErrorKind::Protocol, format!("the key set is not a JWK Set: {e}"))
    })?;
    let mut keys = Vec::new();
    for value in set.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::debug!(%error, "passing over a key of the set that cannot be read");
                continue;
            }
        };
        match key_of(&jwk, auth) {
            Ok(key) => keys.push(key),
            Err(why) => {
                tracing::debug!(kid = ?jwk.common.key_id, why, "passing over a key")
            }
        }
    }
    Ok(keys)
}

fn key_of(jwk: &Jwk, auth: &AuthConfig) -> Result<Key, &'static str> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key");
    }
    let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (_, AlgorithmParameters::OctetKey(_)) => {
            return Err("a shared secret is never taken from a URL");
        }
        (Some(named), _) => Algorithm::from_str(&named.to_string())
            .map_err(|_| "an algorithm pushpull does not check")?,
        (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("a curve pushpull does not check"),
        },
        (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
        (None, _) => return Err("a key type pushpull does not check"),
    };
    if matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err("a shared secret is never taken from a URL");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "its parameters are not a valid key")?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
        validation: validation(algorithm, auth),
    })
}
