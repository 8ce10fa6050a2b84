//! Routing of `/v1/...` requests to transport handlers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use pushpull_core::Error;

use crate::cors::Cors;
use crate::response::{Body, error_response, json_error};
use crate::serve::Shutdown;

/// The error type of request bodies handlers see.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request as handlers see it: any body, boxed (`Send`, not necessarily `Sync`: axum's body
/// is not).
pub type HttpRequest = Request<UnsyncBoxBody<Bytes, BoxError>>;

/// What a handler returns; an `Err` becomes the JSON error response for its kind.
pub type HandlerResult = Result<Response<Body>, Error>;

type Handler = Arc<dyn Fn(HttpRequest, Params) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Values captured from `{name}` segments of a route's pattern.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value captured for `{name}`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// One method and path pattern, such as `GET /v1/topics/{topic}/messages`, and its handler.
#[derive(Clone)]
pub struct Route {
    method: Method,
    pattern: &'static str,
    segments: Vec<Segment>,
    handler: Handler,
    transport: Option<&'static str>,
    long_lived: bool,
}

#[derive(Clone, PartialEq)]
enum Segment {
    Literal(&'static str),
    Capture(&'static str),
}

impl Route {
    /// A route for `method` on `pattern` (segments in braces capture one path segment).
    pub fn new<F, Fut>(method: Method, pattern: &'static str, handler: F) -> Self
    where
        F: Fn(HttpRequest, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let segments = pattern
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Capture(name),
                None => Segment::Literal(s),
            })
            .collect();
        let handler: Handler = Arc::new(move |req, params| Box::pin(handler(req, params)));
        Self { method, pattern, segments, handler, transport: None, long_lived: false }
    }

    /// Answering with a response that lives long (an event stream, a held poll): on a plain
    /// HTTP/1.1 connection, the server writes that response itself, without holding an HTTP/1
    /// connection's buffers for the response's whole life.
    pub fn long_lived(mut self) -> Self {
        self.long_lived = true;
        self
    }

    /// Belonging to `transport`: the request span of a request it answers names it (a route
    /// of no transport is named `api`). A server composing transports labels each route with
    /// the name it registered the transport under.
    pub fn for_transport(mut self, transport: &'static str) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The transport it belongs to, if any.
    pub fn transport(&self) -> Option<&'static str> {
        self.transport
    }

    /// Its method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Its path pattern.
    pub fn pattern(&self) -> &'static str {
        self.pattern
    }

    /// Whether [`matches`](Self::matches) would match `path` (not split), without
    /// allocating: asked of every request head the serve loop reads.
    fn fits(&self, path: &str) -> bool {
        let mut parts = path.trim_start_matches('/').split('/');
        let each = self.segments.iter().all(|segment| match (segment, parts.next()) {
            (Segment::Literal(literal), Some(part)) => *literal == part,
            // Decoded without allocating when it has no escapes; only its validity counts.
            (Segment::Capture(_), Some(part)) => {
                percent_encoding::percent_decode_str(part).decode_utf8().is_ok()
            }
            (_, None) => false,
        });
        each && parts.next().is_none()
    }

    fn matches(&self, path: &[&str]) -> Option<Params> {
        if path.len() != self.segments.len() {
            return None;
        }
        // Every literal first: the routes that share a shape (a topic's messages, events,
        // stream …) are told apart without decoding (and allocating) a capture for each.
        let literals = self.segments.iter().zip(path).all(|(segment, part)| match segment {
            Segment::Literal(literal) => literal == part,
            Segment::Capture(_) => true,
        });
        if !literals {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(path) {
            if let Segment::Capture(name) = segment {
                params.push((*name, percent_decode(part)?));
            }
        }
        Some(Params(params))
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.pattern)
    }
}

fn percent_decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment).decode_utf8().ok().map(|s| s.into_owned())
}

/// Sends each request to the route that matches its method and path.
///
/// A path no route matches is answered 404; a path that matches with another method 405
/// with `Allow`; both with the JSON error body. Cloning is cheap.
///
/// It is a `tower_service::Service` (and a hyper `Service`) over any request body whose data is
/// `Bytes` and that is `Send`, so it is served by [`spawn`](crate::spawn), mounted with axum's
/// `Router::nest_service`, or wrapped in tower layers. Mounted in another server, give it that
/// server's shutdown with [`with_shutdown`](Self::with_shutdown) so its long-lived responses
/// end when the host shuts down.
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<Vec<Route>>,
    cors: Arc<Cors>,
    shutdown: Option<Shutdown>,
    guard: Option<Arc<dyn Guard>>,
    access_log: bool,
}

/// Judges each request before a [`Router`] routes it: what an auth layer plugs in with
/// [`Router::with_guard`], so its refusals carry the router's CORS headers.
pub trait Guard: Send + Sync + 'static {
    /// `Ok` passes the request on, with the [`Grant`](crate::Grant) (if any) in its extensions
    /// and its long-lived response ending when the grant expires; `Err` is the answer.
    fn judge(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<Option<crate::Grant>, Box<Response<Body>>>;

    /// Asked when [`judge`](Self::judge) refused a request: work after which judging it again
    /// may pass it, if any. The auth layer fetches an identity provider's keys again for a
    /// token signed with a key it has not seen. `None` (the default): the refusal stands.
    fn reconsider(
        &self,
        _method: &Method,
        _uri: &http::Uri,
        _headers: &http::HeaderMap,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        None
    }
}

impl Router {
    /// A router with no routes: everything is 404.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds routes. A route with the method and pattern of one already there replaces it, in
    /// its place.
    pub fn with(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        let mine = Arc::make_mut(&mut self.routes);
        for route in routes {
            match mine.iter_mut().find(|r| r.method == route.method && r.pattern == route.pattern) {
                Some(replaced) => *replaced = route,
                None => mine.push(route),
            }
        }
        self
    }

    /// Whether a `GET` of `path` goes to a [`long_lived`](Route::long_lived) route.
    pub fn is_long_lived(&self, path: &str) -> bool {
        self.routes
            .iter()
            .find(|route| route.method == Method::GET && route.fits(path))
            .is_some_and(|route| route.long_lived)
    }

    /// Lets the browser origins `cors` names call every route (preflights included).
    pub fn with_cors(mut self, cors: Cors) -> Self {
        self.cors = Arc::new(cors);
        self
    }

    /// Ends long-lived responses (event streams, held polls, sockets) when `shutdown` fires, for
    /// requests that do not already carry a server's [`Shutdown`] (those served by
    /// [`spawn`](crate::spawn) do). What a host application mounting the router calls.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Logs one line per request at `info` on the target `pushpull::access`: method, path
    /// (never the query, which may hold a token), status, time to the response head, peer.
    pub fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Judges every request with `guard` before routing it (preflights aside).
    pub fn with_guard(mut self, guard: Arc<dyn Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The routes, in the order they are tried.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Answers one request, with CORS headers when the router allows its origin, within a
    /// `request` span (at debug level) carrying the method, path, transport, topic and peer.
    ///
    /// The request is judged, routed and handed to its handler before the returned future is
    /// first polled; what the future keeps is the handler's future and the little the answer
    /// needs after it (the origin, the access log's line). A held poll's answer waits for
    /// most of its life, and every byte kept here is kept per held poll: the request itself
    /// is the handler's alone.
    pub fn handle(
        &self,
        mut request: HttpRequest,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        let span = self.request_span(&request);
        let access = self.access_log.then(|| Access {
            started: std::time::Instant::now(),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            peer: crate::PeerAddr::of(&request),
        });
        let cors = self.cors.is_enabled().then(|| {
            let origin = request.headers().get(header::ORIGIN).cloned();
            (self.cors.clone(), origin)
        });
        if access.is_none() && request.method() == Method::GET {
            // All that is done to a read's answer after its handler is the CORS headers: a
            // held poll answered by its topic's task (see `pages`) writes them itself.
            let mut added = HeaderMap::new();
            if let Some((cors, origin)) = &cors {
                cors.decorate(origin.as_ref(), &mut added);
            }
            request.extensions_mut().insert(Decoration(added));
        }
        let answer = span.in_scope(|| self.answer(request));
        let answered = async move {
            let mut response = answer.await;
            if let Some((cors, origin)) = cors {
                cors.decorate(origin.as_ref(), response.headers_mut());
            }
            if let Some(access) = access {
                access.log(&response);
            }
            response
        };
        tracing::Instrument::instrument(answered, span)
    }

    /// The answer to `request`: judged by the guard (if any), then routed.
    fn answer(&self, request: HttpRequest) -> Answer {
        let judged = match &self.guard {
            None => Ok(None),
            Some(guard) => guard.judge(request.method(), request.uri(), request.headers()),
        };
        match judged {
            Ok(grant) => self.passed(request, grant),
            Err(refusal) => {
                // The guard may have work after which the request passes (a token signed with
                // a key not seen yet): rare, and the request is kept meanwhile.
                let router = self.clone();
                Box::pin(async move { router.reconsidered(request, refusal).await })
            }
        }
    }

    /// A request the guard refused: judged again after the guard's reconsideration, if it
    /// has one; the refusal otherwise.
    async fn reconsidered(
        &self,
        request: HttpRequest,
        refusal: Box<Response<Body>>,
    ) -> Response<Body> {
        let guard = self.guard.as_ref().expect("only a guard refuses");
        let (method, uri, headers) = (request.method(), request.uri(), request.headers());
        let Some(ready) = guard.reconsider(method, uri, headers) else { return *refusal };
        ready.await;
        match guard.judge(method, uri, headers) {
            Err(refusal) => *refusal,
            Ok(grant) => self.passed(request, grant).await,
        }
    }

    /// The answer to a request the guard passed, with its grant (if any).
    fn passed(&self, mut request: HttpRequest, grant: Option<crate::Grant>) -> Answer {
        let Some(grant) = grant else { return self.route(request) };
        // A read (a long poll, an event stream) ends when the token's rights do: it expires
        // or is revoked. Writes are left to finish, so none is cut half done.
        let ending = if request.method() == Method::GET { grant.ending() } else { None };
        request.extensions_mut().insert(grant);
        let routed = self.route(request);
        let Some(mut ending) = ending else { return routed };
        Box::pin(async move {
            // A read held past the end (a long poll) is answered 401 then, as an event stream
            // is ended then: the client renews its token and asks again.
            let response = tokio::select! {
                response = routed => response,
                why = &mut ending => ended_while_held(why),
            };
            response.map(|body| crate::ends_at::EndsAt::new(body, Some(ending)).boxed_unsync())
        })
    }

    /// The answer of the route that matches `request`, or a `404`, `405` or preflight.
    fn route(&self, request: HttpRequest) -> Answer {
        let path = request.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut allowed: Vec<Method> = Vec::new();
        for route in self.routes.iter() {
            let Some(params) = route.matches(&parts) else {
                continue;
            };
            if route.method == request.method()
                || (request.method() == Method::HEAD && route.method == Method::GET)
            {
                let method = request.method().clone();
                let handling = (route.handler)(request, params);
                drop(parts);
                return Box::pin(async move {
                    let mut response = match handling.await {
                        Ok(response) => response,
                        Err(error) => {
                            tracing::debug!(%method, %path, %error, "request failed");
                            error_response(&error)
                        }
                    };
                    if method == Method::HEAD {
                        *response.body_mut() = crate::response::empty();
                    }
                    response
                });
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        Box::pin(std::future::ready(self.unrouted(&request, &path, allowed)))
    }

    /// The answer to a request no route takes: a preflight's, a `404` or a `405`.
    fn unrouted(
        &self,
        request: &HttpRequest,
        path: &str,
        mut allowed: Vec<Method>,
    ) -> Response<Body> {
        if request.method() == Method::OPTIONS && !allowed.is_empty() && self.cors.is_enabled() {
            let origin = request.headers().get(header::ORIGIN);
            if let Some(headers) = self.cors.preflight(origin, &allowed) {
                let mut response = Response::new(crate::response::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response.headers_mut().extend(headers);
                return response;
            }
        }
        if allowed.is_empty() {
            let message = format!("no route for {} {path}", request.method());
            return json_error(StatusCode::NOT_FOUND, "not_found", &message);
        }
        if allowed.contains(&Method::GET) {
            allowed.push(Method::HEAD);
        }
        let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let message = format!("{} is not allowed on {path}; allowed: {allow}", request.method());
        let mut response =
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &message);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_str(&allow).expect("method names are ASCII"));
        response
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.routes.iter()).finish()
    }
}

impl Router {
    /// The boxed request handlers see, with the router's shutdown signal when it has one.
    fn prepare<B>(&self, request: Request<B>) -> HttpRequest
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        if let Some(shutdown) = &self.shutdown
            && Shutdown::in_request(&request).is_none()
        {
            request.extensions_mut().insert(shutdown.clone());
        }
        request
    }
}

/// A request's answer being made: its handler's future, with what follows it.
type Answer = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The fields a [`Router`] adds to the answer of the `GET` it comes with (the CORS headers,
/// or none), in the request's extensions when that is all it does after the handler (no access
/// log): an answer written without going back through the router (a held poll's, written by
/// its topic's task) carries them, and is as the router would have made it.
#[derive(Clone, Debug)]
pub(crate) struct Decoration(pub(crate) HeaderMap);

/// What the access log's line of a request needs once it is answered.
struct Access {
    started: std::time::Instant,
    method: Method,
    path: String,
    peer: Option<std::net::SocketAddr>,
}

impl Access {
    fn log(self, response: &Response<Body>) {
        tracing::info!(
            target: "pushpull::access",
            method = %self.method,
            path = self.path,
            status = response.status().as_u16(),
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
            peer = self.peer.map(|p| p.to_string()).unwrap_or_default(),
            "request"
        );
    }
}

/// The future of a [`Router`] call.
pub type RouterFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

impl<B> tower_service::Service<Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let request = self.prepare(request);
        Box::pin(futures::FutureExt::map(self.handle(request), Ok))
    }
}

impl<B> hyper::service::Service<Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = RouterFuture;

    fn call(&self, request: Request<B>) -> Self::Future {
        let request = self.prepare(request);
        Box::pin(futures::FutureExt::map(self.handle(request), Ok))
    }
}

/// The query parameters of a request, decoded.
pub fn query_params(request: &HttpRequest) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Implements `tower_service::Service` and hyper's `Service` for a type with a
/// `router: Router` field by handing every request to that router: how each transport's
/// `Server` becomes a service that mounts anywhere a [`Router`] does.
#[macro_export]
macro_rules! serve_with_router {
    (impl[$($generics:tt)*] $server:ty) => {
        impl<B, $($generics)*> $crate::__private::tower_service::Service<$crate::__private::http::Request<B>>
            for $server
        where
            B: $crate::__private::http_body::Body<Data = $crate::__private::Bytes> + Send + 'static,
            B::Error: Into<$crate::BoxError>,
        {
            type Response = $crate::__private::http::Response<$crate::Body>;
            type Error = std::convert::Infallible;
            type Future = $crate::RouterFuture;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                $crate::__private::tower_service::Service::<$crate::__private::http::Request<B>>::poll_ready(
                    &mut self.router,
                    cx,
                )
            }

            fn call(&mut self, request: $crate::__private::http::Request<B>) -> Self::Future {
                $crate::__private::tower_service::Service::call(&mut self.router, request)
            }
        }

        impl<B, $($generics)*> $crate::__private::hyper::service::Service<$crate::__private::http::Request<B>>
            for $server
        where
            B: $crate::__private::http_body::Body<Data = $crate::__private::Bytes> + Send + 'static,
            B::Error: Into<$crate::BoxError>,
        {
            type Response = $crate::__private::http::Response<$crate::Body>;
            type Error = std::convert::Infallible;
            type Future = $crate::RouterFuture;

            fn call(&self, request: $crate::__private::http::Request<B>) -> Self::Future {
                $crate::__private::hyper::service::Service::call(&self.router, request)
            }
        }
    };
    ($server:ty) => {
        $crate::serve_with_router!(impl[] $server);
    };
}

impl Router {
    /// The span of one request: what `tracing` events during it (and tasks it starts with
    /// `in_current_span`, such as a WebSocket session) carry. Its transport is the one the
    /// route it goes to belongs to (`api` for the shared routes).
    fn request_span(&self, request: &HttpRequest) -> tracing::Span {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return tracing::Span::none();
        }
        let path = request.uri().path();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let matched = self.routes.iter().find_map(|route| {
            let same_method = route.method == request.method()
                || (request.method() == Method::HEAD && route.method == Method::GET);
            if !same_method {
                return None;
            }
            route.matches(&parts).map(|params| (route.transport, params))
        });
        let (transport, topic) = match &matched {
            Some((transport, params)) => {
                (transport.unwrap_or("api"), params.get("topic").unwrap_or_default())
            }
            None => ("api", ""),
        };
        let peer = crate::PeerAddr::of(request).map(|p| p.to_string()).unwrap_or_default();
        tracing::debug_span!("request", method = %request.method(), path, transport, topic, peer)
    }
}

/// `401` for a read whose token expired or was revoked while it was held, as RFC 6750 answers
/// an invalid token.
fn ended_while_held(why: crate::revoke::Ended) -> Response<Body> {
    let message = format!("{} while the request was held", why.message());
    let error = pushpull_core::Error::new(pushpull_core::ErrorKind::Unauthorized, message);
    let mut response = crate::response::error_response(&error);
    let challenge =
        format!("Bearer error=\"invalid_token\", error_description=\"{}\"", why.message());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_str(&challenge).expect("the challenge is ASCII"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn request(uri: &str) -> Request<http_body_util::Empty<Bytes>> {
        Request::builder().uri(uri).body(http_body_util::Empty::new()).expect("a request")
    }

    /// A held poll waits in its router's future and its handler's for most of its life, and
    /// every byte they keep is kept per held poll: neither may keep room for the request (or
    /// the router's other work) while the handler waits. The bounds are loose: the router's
    /// future was 3,016 bytes and a held poll's handler 1,608 when each kept the request.
    #[test]
    fn a_waiting_request_keeps_little_beside_its_handler() {
        let waits = Route::new(Method::GET, "/waits/{x}", |_: HttpRequest, _: Params| async {
            std::future::pending::<()>().await;
            Ok(Response::new(crate::response::empty()))
        });
        let mut router = Router::new().with(vec![waits]);
        let answering = tower_service::Service::call(&mut router, request("/waits/1"));
        let kept = std::mem::size_of_val(&*answering);
        assert!(kept <= 512, "the router's future of a waiting request is {kept} bytes");

        let broker: Arc<dyn pushpull_core::Broker> = Arc::new(pushpull_core::MemoryBroker::new());
        let context = crate::transport::Context::new(broker);
        let hold = crate::pages::Hold {
            max_wait: Duration::from_secs(30),
            held: crate::Gauge::new(),
            meter: crate::metrics::DeliveryMeter::new("longpoll"),
            fanout: true,
            by_topic: Arc::default(),
        };
        let route = crate::pages::page_route(&context, Some(hold));
        let parts = ["v1", "topics", "t", "messages"];
        let params = route.matches(&parts).expect("the page route");
        let held = router.prepare(request("/v1/topics/t/messages?wait=30"));
        let handling = (route.handler)(held, params);
        let kept = std::mem::size_of_val(&*handling);
        assert!(kept <= 1_536, "a held poll's handler future is {kept} bytes");
    }

    /// `fits` (asked of every head the serve loop reads, without allocating) says what
    /// `matches` says, for paths that match, differ in a literal, in length, or carry escapes.
    #[test]
    fn fits_agrees_with_matches() {
        let ok = |_: HttpRequest, _: Params| async { Ok(Response::new(crate::response::empty())) };
        let routes = [
            Route::new(Method::GET, "/v1/topics/{topic}/messages", ok),
            Route::new(Method::GET, "/v1/topics/{topic}/events", ok),
            Route::new(Method::GET, "/v1/events", ok),
            Route::new(Method::GET, "/", ok),
        ];
        let paths = [
            "/v1/topics/t/messages",
            "/v1/topics/t/events",
            "/v1/topics/a%20b/events",
            "/v1/topics/%FF/events",
            "/v1/topics/%E2%82%AC/messages",
            "/v1/topics//messages",
            "/v1/topics/t/messages/",
            "/v1/topics/t",
            "/v1/topics/t/stream",
            "/v1/events",
            "/v1/events/x",
            "/v2/events",
            "/",
            "",
        ];
        let mut matched = 0;
        for route in &routes {
            for path in paths {
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let matches = route.matches(&parts).is_some();
                matched += usize::from(matches);
                assert_eq!(route.fits(path), matches, "{} on {path:?}", route.pattern);
            }
        }
        // The table covers both answers.
        assert!(matched >= 6, "{matched} matched");
    }
}
