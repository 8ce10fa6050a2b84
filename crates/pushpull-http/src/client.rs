//! The client side shared by the HTTP transports: requests, error mapping, publish.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pushpull_core::{BearerToken, Error, ErrorKind, Publication, Receipt, Topic};

use crate::publish::{EVENT_HEADER, IDEMPOTENCY_KEY_HEADER};
use crate::response::error_from_response;
use crate::watched::{Outcome, WatchingConnector, answered_or_ended};
use crate::wire;

/// Settings of an [`HttpClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpClientConfig {
    /// How long to wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How long one ordinary request may take, body included.
    pub request_timeout: Duration,
    /// The largest response body accepted.
    pub max_response_bytes: usize,
    /// With `https://`: a PEM file of certificate authorities trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The bearer token sent with every request.
    pub token: BearerToken,
    /// Page requests ask for gzip-compressed pages (`Accept-Encoding: gzip`).
    pub accept_gzip: bool,
}

impl HttpClientConfig {
    /// The settings every transport's client has (how long a request may take, the CA to
    /// trust, the token to send), the rest as by default.
    pub fn endpoint(
        request_timeout: Duration,
        ca_file: Option<PathBuf>,
        token: BearerToken,
    ) -> Self {
        Self { request_timeout, ca_file, token, ..Self::default() }
    }
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024 * 1024,
            ca_file: None,
            token: BearerToken::none(),
            accept_gzip: true,
        }
    }
}

/// A pooled HTTP/1.1 client bound to one server (`http://` or `https://`), raising pushpull
/// errors named after a transport.
///
/// With a [`BearerToken`] it sends `Authorization: Bearer …`; when the server answers 401 and
/// the token comes from a [`TokenSource`](pushpull_core::TokenSource), it asks for a new one
/// and sends the request again, once.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: LegacyClient<WatchingConnector<HttpsConnector<HttpConnector>>, Full<Bytes>>,
    base: String,
    transport: &'static str,
    config: HttpClientConfig,
}

impl HttpClient {
    /// A client of the server at `base_url` (such as `http://127.0.0.1:8080`, optionally with a
    /// path prefix), whose errors name `transport`.
    pub fn new(
        base_url: &str,
        transport: &'static str,
        config: HttpClientConfig,
    ) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_owned();
        let uri: http::Uri = base.parse().map_err(|e| {
            Error::new(ErrorKind::Config, format!("url {base_url:?} is not a valid URL: {e}"))
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("url {base_url:?} must start with http:// or https://"),
            )
            .with_transport(transport));
        }
        if uri.host().is_none() {
            return Err(Error::new(ErrorKind::Config, format!("url {base_url:?} has no host")));
        }
        let tls = crate::tls::client_config(config.ca_file.as_deref())
            .map_err(|e| e.with_transport(transport))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let inner = LegacyClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(WatchingConnector(connector));
        Ok(Self { inner, base, transport, config })
    }

    /// The transport name used in errors.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// The settings.
    pub fn config(&self) -> &HttpClientConfig {
        &self.config
    }

    /// The full URL of `path_and_query`, which starts with `/`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// A request builder for `method` on `path_and_query`.
    pub fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        Request::builder().method(method).uri(self.url(path_and_query))
    }

    /// Sends `request` with the client's token and waits for the response head, up to
    /// `timeout`. A 401 is answered by renewing the token, if its source can, and sending
    /// again once.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Error> {
        let Some(token) = self.config.token.get().await? else {
            return self.send_once(request, timeout).await;
        };
        let again = self.config.token.renews().then(|| copy_request(&request));
        set_bearer(&mut request, &token)?;
        let response = self.send_once(request, timeout).await?;
        let (StatusCode::UNAUTHORIZED, Some(mut again)) = (response.status(), again) else {
            return Ok(response);
        };
        match self.config.token.renew(&token).await? {
            Some(renewed) if renewed != token => {
                tracing::debug!("the server refused the token; sending again with a renewed one");
                set_bearer(&mut again, &renewed)?;
                self.send_once(again, timeout).await
            }
            _ => Ok(response),
        }
    }

    /// The token this client sends now, if any (asking its source for the first one).
    pub async fn token(&self) -> Result<Option<String>, Error> {
        self.config.token.get().await
    }

    async fn send_once(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Error> {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = answered_or_ended(request, |request| self.inner.request(request));
        let answer = match tokio::time::timeout(timeout, answer).await {
            Ok(Outcome::Answered(answer)) => Ok(answer),
            Ok(Outcome::Ended) => {
                return Err(self.error(
                    ErrorKind::Connect,
                    format!("{what}: the connection closed before the server answered"),
                ));
            }
            Err(elapsed) => Err(elapsed),
        };
        match answer {
            Err(_) => {
                Err(self
                    .error(ErrorKind::Timeout, format!("{what}: no response within {timeout:?}")))
            }
            Ok(Err(err)) if err.is_connect() => {
                let source =
                    std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default();
                Err(self
                    .error(
                        ErrorKind::Connect,
                        format!("could not connect to {}: {source}", self.base),
                    )
                    .with_source(err))
            }
            Ok(Err(err)) => Err(self
                .error(ErrorKind::Connect, format!("{what}: connection failed: {err}"))
                .with_source(err)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends the request `make` builds, retrying twice on a connection failure (a pooled
    /// connection the server had closed, say). Only for requests that are safe to repeat: GETs,
    /// and publishes that carry an idempotency key.
    pub async fn send_idempotent(
        &self,
        make: impl Fn() -> Result<Request<Full<Bytes>>, Error>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Error> {
        const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(200)];
        let mut delays = RETRY_DELAYS.iter();
        loop {
            match self.send(make()?, timeout).await {
                Err(error) if error.kind() == ErrorKind::Connect => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(%error, "retrying a request that is safe to repeat");
                        tokio::time::sleep(*delay).await;
                    }
                    None => return Err(error),
                },
                other => return other,
            }
        }
    }

    /// Reads a whole response body, up to the configured maximum, within `timeout`; a body the
    /// server sent gzip-compressed (a page, which the page requests ask for) is inflated, and
    /// held to the same maximum inflated.
    pub async fn read_body(
        &self,
        response: Response<Incoming>,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        let max = self.config.max_response_bytes;
        let coding = response.headers().get(header::CONTENT_ENCODING).cloned();
        let too_large = || {
            self.error(
                ErrorKind::TooLarge,
                format!("the response body is over the limit of {max} bytes"),
            )
            .with_retryable(false)
        };
        let body =
            match tokio::time::timeout(timeout, Limited::new(response.into_body(), max).collect())
                .await
            {
                Err(_) => {
                    return Err(self.error(
                        ErrorKind::Timeout,
                        format!("the response body did not arrive within {timeout:?}"),
                    ));
                }
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                    return Err(too_large());
                }
                Ok(Err(err)) => {
                    return Err(self.error(
                        ErrorKind::Connect,
                        format!("the response body was cut off: {err}"),
                    ));
                }
            };
        let Some(coding) = coding else { return Ok(body) };
        let coding = coding.to_str().unwrap_or_default().trim();
        if coding.eq_ignore_ascii_case("identity") {
            return Ok(body);
        }
        if !coding.eq_ignore_ascii_case(crate::gzip::GZIP) {
            return Err(self.error(
                ErrorKind::Protocol,
                format!("the response is encoded {coding:?}, which this client did not ask for"),
            ));
        }
        crate::gzip::inflate(&body, max).map_err(|error| match error {
            crate::gzip::InflateError::TooLarge => too_large(),
            crate::gzip::InflateError::Corrupt(why) => self.error(
                ErrorKind::Protocol,
                format!("the response body is not the gzip it says it is: {why}"),
            ),
        })
    }

    /// Turns a non-success response into the error it describes.
    pub async fn error_for(&self, response: Response<Incoming>) -> Error {
        let status = response.status();
        let retry_after = retry_after(&response);
        let body = self.read_body(response, self.config.request_timeout).await.unwrap_or_default();
        let mut error = error_from_response(status, &body).with_transport(self.transport);
        if let Some(delay) = retry_after {
            error = error.with_retry_after(delay);
        }
        error
    }

    /// An error of `kind` named after this client's transport.
    pub fn error(&self, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::new(kind, message).with_transport(self.transport)
    }

    /// Publishes with `POST /v1/topics/{topic}`.
    ///
    /// A publication without an idempotency key gets a fresh random one, so a publish whose
    /// connection drops is retried without being stored twice.
    pub async fn publish(
        &self,
        topic: &Topic,
        mut publication: Publication,
    ) -> Result<Receipt, Error> {
        if publication.key().is_none() {
            publication = publication.idempotency_key(random_key());
        }
        publication.validate(usize::MAX).map_err(|e| e.with_transport(self.transport))?;
        let path = format!("/v1/topics/{topic}");
        let make = || {
            let mut request = self.request(Method::POST, &path);
            if let Some(event) = publication.event_type() {
                request = request.header(EVENT_HEADER, event);
            }
            if let Some(content_type) = publication.media_type() {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            if let Some(key) = publication.key() {
                request = request.header(IDEMPOTENCY_KEY_HEADER, key);
            }
            request.body(Full::new(publication.payload().clone())).map_err(|e| {
                self.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
            })
        };
        let timeout = self.config.request_timeout;
        let response = self.send_idempotent(make, timeout).await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.error_for(response).await);
        }
        let body = self.read_body(response, timeout).await?;
        wire::decode_receipt(&body).map_err(|e| e.with_transport(self.transport))
    }

    /// Publishes a batch in one request (`POST /v1/publish`), in chunks of at most
    /// [`MAX_BATCH`](crate::MAX_BATCH): each publication's receipt or error, in order. Each
    /// gets an idempotency key when it has none, so the request is retried safely.
    pub async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        let mut answers = Vec::with_capacity(publications.len());
        let mut items = Vec::with_capacity(publications.len());
        for (topic, mut publication) in publications {
            if publication.key().is_none() {
                publication = publication.idempotency_key(random_key());
            }
            items.push(wire::PublicationJson::from_publication(&topic, &publication));
        }
        for chunk in items.chunks(crate::MAX_BATCH) {
            let body = serde_json::to_vec(&wire::BatchJson { publications: chunk.to_vec() })
                .map_err(|e| self.error(ErrorKind::BadRequest, format!("cannot encode: {e}")))?;
            let body = Bytes::from(body);
            let make = || {
                self.request(Method::POST, crate::BATCH_PATH)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .map_err(|e| {
                        self.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
                    })
            };
            let timeout = self.config.request_timeout;
            let response = self.send_idempotent(make, timeout).await?;
            if response.status() != StatusCode::OK {
                return Err(self.error_for(response).await);
            }
            let body = self.read_body(response, timeout).await?;
            let answer: wire::BatchAnswerJson = serde_json::from_slice(&body).map_err(|e| {
                self.error(ErrorKind::Protocol, format!("a batch answer that is not JSON: {e}"))
            })?;
            if answer.results.len() != chunk.len() {
                return Err(self.error(
                    ErrorKind::Protocol,
                    format!("{} answers to {} publications", answer.results.len(), chunk.len()),
                ));
            }
            for result in answer.results {
                answers.push(result.into_result(|kind, message| self.error(kind, message)));
            }
        }
        Ok(answers)
    }
}

/// A copy of `request`, to send again.
fn copy_request(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Sets `Authorization: Bearer token`, marked sensitive so that nothing logs it.
fn set_bearer<B>(request: &mut Request<B>, token: &str) -> Result<(), Error> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
        Error::new(ErrorKind::Config, "the token holds characters a header cannot carry")
    })?;
    value.set_sensitive(true);
    request.headers_mut().insert(header::AUTHORIZATION, value);
    Ok(())
}

/// The delay a `Retry-After` header asks for, in its delta-seconds form.
pub fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    let value: &HeaderValue = response.headers().get(header::RETRY_AFTER)?;
    value.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// 128 random bits in hex: an idempotency key no other publish will reuse.
fn random_key() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without OS randomness, epochs fall back to clock and hash keys; so do we.
        let a = pushpull_core::Epoch::random().as_u64().to_le_bytes();
        let b = pushpull_core::Epoch::random().as_u64().to_le_bytes();
        bytes[..8].copy_from_slice(&a);
        bytes[8..].copy_from_slice(&b);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HttpClient {
    /// GETs `path` (safe to repeat) and reads its JSON answer.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let timeout = self.config.request_timeout;
        let make = || {
            self.request(Method::GET, path)
                .body(Full::new(Bytes::new()))
                .map_err(|e| self.error(ErrorKind::BadRequest, e.to_string()))
        };
        let response = self.send_idempotent(make, timeout).await?;
        if response.status() != StatusCode::OK {
            return Err(self.error_for(response).await);
        }
        let body = self.read_body(response, timeout).await?;
        serde_json::from_slice(&body).map_err(|e| {
            self.error(
                ErrorKind::Protocol,
                format!("GET {path}: the answer is not what it should be: {e}"),
            )
        })
    }
}

/// Presence over the HTTP API: `GET /v1/topics/{topic}/presence` and `…/presence/stats`.
#[async_trait::async_trait]
impl pushpull_core::Presence for HttpClient {
    async fn snapshot(&self, topic: &Topic) -> Result<pushpull_core::PresenceSnapshot, Error> {
        self.get_json(&format!("/v1/topics/{topic}/presence")).await
    }

    async fn stats(&self, topic: &Topic) -> Result<pushpull_core::PresenceStats, Error> {
        self.get_json(&format!("/v1/topics/{topic}/presence/stats")).await
    }
}
