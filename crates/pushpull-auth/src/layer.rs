//! The tower layer: reads the token, checks the right each route needs, hands the [`Grant`] on,
//! and ends long-lived responses when their token expires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use pushpull_core::{Error, ErrorKind};
use pushpull_http::{Cors, EndsAt, Grant, Right};

use crate::config::AuthConfig;
use crate::refusal::Refusal;
use crate::verify::Verifier;

/// Puts [`Auth`] around a service: pushpull's [`Router`](pushpull_http::Router), a transport
/// server, or an application's own routes that follow pushpull's paths.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
    cors: Option<Cors>,
}

impl AuthLayer {
    /// A layer checking tokens as `config` says.
    pub fn new(config: &AuthConfig) -> Result<Self, Error> {
        Ok(Self::with_verifier(Arc::new(Verifier::new(config)?)))
    }

    /// A layer checking tokens as `config` says, requests without a token also getting what
    /// the `[[topics]]` `rules` open to them (and not what they close).
    pub fn with_rules(
        config: &AuthConfig,
        rules: &pushpull_core::TopicRules,
    ) -> Result<Self, Error> {
        Ok(Self::with_verifier(Arc::new(Verifier::with_rules(config, rules)?)))
    }

    /// A layer checking tokens with `verifier`.
    pub fn with_verifier(verifier: Arc<Verifier>) -> Self {
        Self { verifier, cors: None }
    }

    /// The revocations it enforces (for the admin route that adds to them).
    pub fn revocations(&self) -> &pushpull_http::Revocations {
        self.verifier.revocations()
    }

    /// Lets the browser origins `cors` allows read the refusals (the service inside answers
    /// everything else, preflights included).
    pub fn with_cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, layer: self.clone() }
    }
}

/// Authorizes each request before `S` sees it.
///
/// | request | needs |
/// |---|---|
/// | `POST /v1/topics/{topic}` | `publish` on the topic (and the token's publish allowance) |
/// | `GET`/`HEAD /v1/topics/{topic}/…` (pages, events, streams) | `subscribe` on the topic |
/// | `GET /v1/ws` | any valid token; each operation on the socket is checked by the server |
/// | `/v1/webhooks…`, `/v1/admin/…`, `/metrics` | `admin` |
/// | `GET /v1/health`, `GET /v1/ready`, `OPTIONS` (CORS preflights), the demo page and the browser client (`/demo`, `/pushpull/…`) | nothing |
/// | anything else | any valid token |
///
/// The token comes from `Authorization: Bearer …`, else the query parameter (`access_token`),
/// else, for reads and WebSocket upgrades only, the cookie (`pushpull_token`): a cookie rides
/// along with cross-site form posts, so it never authorizes a publish. The request passes with
/// its [`Grant`] in its extensions; a response without a known length (an event stream, a
/// chunked stream) ends when the token expires, and the client comes back with a new one.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Nothing,
    AnyToken,
    Publish(String),
    Subscribe(String),
    Admin,
}

fn need(method: &Method, path: &str) -> Need {
    if method == Method::OPTIONS {
        return Need::Nothing;
    }
    let decode = |segment: &str| {
        percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        // The demo page and the browser client are public files; what they do needs tokens.
        ["v1", "health"] | ["v1", "ready"] | ["demo"] | ["pushpull", _] => Need::Nothing,
        ["v1", "ws"] => Need::AnyToken,
        ["v1", "webhooks", ..] | ["v1", "admin", ..] | ["metrics"] => Need::Admin,
        ["v1", "topics", topic] if method == Method::POST => Need::Publish(decode(topic)),
        ["v1", "topics", topic, _] | ["v1", "topics", topic, "presence", "stats"]
            if method == Method::GET || method == Method::HEAD =>
        {
            Need::Subscribe(decode(topic))
        }
        _ => Need::AnyToken,
    }
}

/// Where the token came from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Cookie,
}

/// The token a request carries, if any.
fn token_of(
    headers: &HeaderMap,
    query: Option<&str>,
    verifier: &Verifier,
) -> Result<Option<(String, Source)>, Refusal> {
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = authorizations.next() {
        if authorizations.next().is_some() {
            return Err(Refusal::invalid_request("more than one Authorization header"));
        }
        let text = value.to_str().unwrap_or_default();
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refusal::invalid_request(
                "the Authorization header must use the Bearer scheme",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(Refusal::invalid_request("the Authorization header holds no token"));
        }
        return Ok(Some((token.to_owned(), Source::Header)));
    }
    if let (Some(name), Some(query)) = (&verifier.query_param, query) {
        let found = form_pairs(query).find(|(key, _)| key == name);
        if let Some((_, token)) = found {
            return Ok(Some((token, Source::Query)));
        }
    }
    if let Some(name) = &verifier.cookie {
        for value in headers.get_all(header::COOKIE) {
            let text = value.to_str().unwrap_or_default();
            let found = text
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key == name);
            if let Some((_, token)) = found {
                return Ok(Some((token.trim_matches('"').to_owned(), Source::Cookie)));
            }
        }
    }
    Ok(None)
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Some((decode(key), decode(value)))
    })
}

/// What to do with a request: pass it on with its grant, or answer it.
enum Verdict {
    Pass(Option<Grant>),
    Answer(Stop),
}

/// Why a request is answered by the layer.
enum Stop {
    /// Refused: 400, 401 or 403.
    Refuse(Refusal),
    /// Over the token's publish allowance: 429.
    Limit(Error),
}

impl AuthLayer {
    /// Whether the token of a refused request names a key a key set may have by now.
    fn wants_fresh_keys(&self, uri: &http::Uri, headers: &HeaderMap) -> bool {
        match token_of(headers, uri.query(), &self.verifier) {
            Ok(Some((token, _))) => self.verifier.wants_fresh_keys(&token),
            _ => false,
        }
    }

    fn verdict(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path: &str,
        query: Option<&str>,
    ) -> Verdict {
        let need = need(method, path);
        if need == Need::Nothing {
            return Verdict::Pass(None);
        }
        let verifier = &self.verifier;
        let (grant, anonymous) = match token_of(headers, query, verifier) {
            Err(refusal) => return Verdict::Answer(Stop::Refuse(refusal)),
            Ok(Some((_, Source::Cookie))) if matches!(need, Need::Publish(_)) => {
                return Verdict::Answer(Stop::Refuse(Refusal::missing(
                    "publishing needs the token in the Authorization header or the query; a \
                     cookie is not accepted for it",
                )));
            }
            Ok(Some((token, _))) => match verifier.verify(&token) {
                Ok(mut grant) => {
                    // A socket opened with it may take a new token in place, checked so.
                    grant.checker = Some(self.verifier.clone());
                    (grant, false)
                }
                Err(refusal) => return Verdict::Answer(Stop::Refuse(refusal)),
            },
            Ok(None) => match verifier.anonymous() {
                Some(anonymous) if need != Need::AnyToken => (anonymous.clone(), true),
                Some(anonymous) => return Verdict::Pass(Some(anonymous.clone())),
                None => {
                    return Verdict::Answer(Stop::Refuse(Refusal::missing(format!(
                        "{method} {path} needs a token (Authorization: Bearer …)"
                    ))));
                }
            },
        };
        let checked = match &need {
            // The token was just checked, expiry included.
            Need::Nothing | Need::AnyToken => Ok(()),
            Need::Publish(topic) => match pushpull_core::Topic::new(topic.as_str()) {
                // A bad topic name is the route's to report.
                Err(_) => grant.check(Right::Publish(topic)),
                Ok(topic) => grant.check_publish(&topic),
            },
            Need::Subscribe(topic) => grant.check(Right::Subscribe(topic)),
            Need::Admin => grant.check(Right::Admin),
        };
        match checked {
            Ok(()) => Verdict::Pass(Some(grant)),
            Err(error) if error.kind() == ErrorKind::RateLimited => {
                Verdict::Answer(Stop::Limit(error))
            }
            Err(error) => {
                let scope = match &need {
                    Need::Publish(topic) => Right::Publish(topic).to_string(),
                    Need::Subscribe(topic) => Right::Subscribe(topic).to_string(),
                    _ => Right::Admin.to_string(),
                };
                if anonymous {
                    // No token at all: the answer is "authenticate", not "forbidden".
                    return Verdict::Answer(Stop::Refuse(Refusal::missing(format!(
                        "{method} {path} needs a token granting {scope}"
                    ))));
                }
                Verdict::Answer(Stop::Refuse(Refusal::from_error(&error, scope)))
            }
        }
    }

    fn answer<B>(&self, stop: Stop, headers: &HeaderMap) -> Response<AuthBody<B>> {
        let mut response = match stop {
            Stop::Refuse(refusal) => {
                tracing::debug!(status = %refusal.status, reason = %refusal.message, "refused");
                refusal.response::<Bytes>()
            }
            Stop::Limit(error) => {
                let (parts, _) = pushpull_http::error_response(&error).into_parts();
                let body =
                    pushpull_http::wire::encode_error(error.kind().as_str(), error.message());
                Response::from_parts(parts, Bytes::from(body))
            }
        };
        if let Some(cors) = &self.cors {
            cors.decorate(headers.get(header::ORIGIN), response.headers_mut());
        }
        response.map(AuthBody::refused)
    }
}

/// The future of an [`Auth`] call.
pub type AuthFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<AuthBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Auth<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = AuthFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let verdict = self.layer.verdict(
            request.method(),
            request.headers(),
            request.uri().path(),
            request.uri().query(),
        );
        let grant = match verdict {
            Verdict::Pass(grant) => grant,
            Verdict::Answer(stop)
                if self.layer.wants_fresh_keys(request.uri(), request.headers()) =>
            {
                // A key set may have the token's new key: fetch it, then decide again.
                let mut this = self.clone();
                drop(stop);
                return Box::pin(async move {
                    this.layer.verifier.refresh_keys().await;
                    let verdict = this.layer.verdict(
                        request.method(),
                        request.headers(),
                        request.uri().path(),
                        request.uri().query(),
                    );
                    match verdict {
                        Verdict::Pass(grant) => this.pass(request, grant).await,
                        Verdict::Answer(stop) => Ok(this.layer.answer(stop, request.headers())),
                    }
                });
            }
            Verdict::Answer(stop) => {
                let response = self.layer.answer(stop, request.headers());
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        self.pass(request, grant)
    }
}

impl<S> Auth<S> {
    /// Hands `request` with its `grant` to the inner service.
    fn pass<ReqBody, ResBody>(
        &mut self,
        mut request: Request<ReqBody>,
        grant: Option<Grant>,
    ) -> AuthFuture<ResBody, S::Error>
    where
        S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResBody: Send + 'static,
    {
        let ending = grant.as_ref().and_then(Grant::ending);
        if let Some(grant) = grant {
            request.extensions_mut().insert(grant);
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| AuthBody::passed(body, ending)))
        })
    }
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for Auth<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = AuthFuture<ResBody, S::Error>;

    fn call(&self, request: Request<ReqBody>) -> Self::Future {
        // Services under pushpull's layers are always ready (they do their work in the future).
        tower_service::Service::call(&mut self.clone(), request)
    }
}

/// A response body from [`Auth`]: the inner service's, ended at the token's expiry when it has
/// no known length, or a refusal.
pub struct AuthBody<B> {
    inner: Option<EndsAt<B>>,
    refusal: Option<Bytes>,
}

impl<B> AuthBody<B> {
    fn passed(body: B, ending: Option<pushpull_http::Ending>) -> Self {
        Self { inner: Some(EndsAt::new(body, ending)), refusal: None }
    }

    fn refused(body: Bytes) -> Self {
        Self { inner: None, refusal: Some(body) }
    }
}

impl<B: Body<Data = Bytes>> Body for AuthBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.refusal.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.refusal.is_none() && self.inner.as_ref().is_none_or(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.refusal, &self.inner) {
            (Some(bytes), _) => SizeHint::with_exact(bytes.len() as u64),
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

impl<B> std::fmt::Debug for AuthBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthBody").field("refusal", &self.refusal.is_some()).finish()
    }
}

/// The layer as a [`Router`](pushpull_http::Router)'s guard, so its refusals get the router's
/// CORS headers: `router.with_guard(Arc::new(layer))`.
impl pushpull_http::Guard for AuthLayer {
    fn judge(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Grant>, Box<Response<pushpull_http::Body>>> {
        match self.verdict(method, headers, uri.path(), uri.query()) {
            Verdict::Pass(grant) => Ok(grant),
            Verdict::Answer(stop) => {
                let response: Response<AuthBody<pushpull_http::Body>> = self.answer(stop, headers);
                Err(Box::new(response.map(http_body_util::BodyExt::boxed_unsync)))
            }
        }
    }

    fn reconsider(
        &self,
        _method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        self.wants_fresh_keys(uri, headers)
            .then(|| Box::pin(self.verifier.refresh_keys()) as Pin<Box<_>>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_their_operation_does() {
        assert_eq!(need(&Method::POST, "/v1/topics/a%3Ab"), Need::Publish("a:b".into()));
        assert_eq!(need(&Method::GET, "/v1/topics/t/events"), Need::Subscribe("t".into()));
        assert_eq!(need(&Method::GET, "/v1/topics/t/messages"), Need::Subscribe("t".into()));
        assert_eq!(need(&Method::GET, "/v1/ws"), Need::AnyToken);
        assert_eq!(need(&Method::DELETE, "/v1/webhooks/ep_1"), Need::Admin);
        assert_eq!(need(&Method::POST, "/v1/admin/revocations"), Need::Admin);
        assert_eq!(need(&Method::GET, "/metrics"), Need::Admin);
        assert_eq!(need(&Method::GET, "/v1/health"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/demo"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/pushpull/pushpull.js"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/metrics"), Need::Admin);
        assert_eq!(need(&Method::OPTIONS, "/v1/topics/t"), Need::Nothing);
        assert_eq!(need(&Method::PUT, "/v1/topics/t"), Need::AnyToken);
    }
}
