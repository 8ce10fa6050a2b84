//! The server half: `GET /v1/topics/{topic}/messages` answers a page at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use pushpull_core::{Client, Cursor, Error, Page, Topic};
use pushpull_http::{
    Body, BoxError, HandlerResult, HttpRequest, Params, PublishLimits, Route, Router, json,
    query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{POLL_INTERVAL_HEADER, etag, if_none_match_matches};

/// The route of a topic's messages.
pub const MESSAGES_PATH: &str = "/v1/topics/{topic}/messages";

/// The polling server over a broker: publish and page routes. A cheap-`Clone` hyper service.
///
/// `GET /v1/topics/{topic}/messages?after=CURSOR&limit=N` answers at once with a JSON page,
/// a strong `ETag`, `Cache-Control: no-cache` and the `Pushpull-Poll-Interval-Ms` hint; a
/// request whose `If-None-Match` matches gets `304 Not Modified` and no body.
#[derive(Clone)]
pub struct Server {
    router: Router,
}

impl Server {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Client>, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let max_body = broker.capabilities().max_payload.unwrap_or(4 * 1024 * 1024);
        let publish = pushpull_http::publish_route(
            broker.clone(),
            PublishLimits { max_body, body_timeout: Duration::from_secs(30) },
        );
        let router = Router::new().with([publish]).with(routes(broker, config));
        Ok(Self { router })
    }

    /// The routes, to mount beside other transports'.
    pub fn router(&self) -> &Router {
        &self.router
    }
}

/// The page route alone, for servers that assemble their own router (other transports reuse it
/// for their clients' `fetch`).
pub fn routes(broker: Arc<dyn Client>, config: ServerConfig) -> Vec<Route> {
    let config = Arc::new(config);
    let route = Route::new(Method::GET, MESSAGES_PATH, move |req: HttpRequest, params: Params| {
        let broker = broker.clone();
        let config = config.clone();
        async move { page(&*broker, &config, req, params).await }
    });
    vec![route]
}

async fn page(
    broker: &dyn Client,
    config: &ServerConfig,
    req: HttpRequest,
    params: Params,
) -> HandlerResult {
    let request = PageRequest::parse(&req, &params, config)?;
    let page = broker.fetch(&request.topic, request.cursor, request.limit).await?;
    Ok(page_response(page, &request, config))
}

/// What a page request asks for, parsed and checked.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// The topic.
    pub topic: Topic,
    /// Where to read from (`?after=`, else `Pushpull-Cursor`, else `beginning`).
    pub cursor: Cursor,
    /// How many messages at most.
    pub limit: usize,
    /// The `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
    /// The query parameters, for transports that read more of them.
    pub query: HashMap<String, String>,
}

impl PageRequest {
    /// Reads topic, cursor, limit and `If-None-Match`; a bad value is a 400 that says why.
    pub fn parse(req: &HttpRequest, params: &Params, config: &ServerConfig) -> Result<Self, Error> {
        let topic = request::topic(params)?;
        let query = query_params(req);
        let cursor = request::cursor(req, &query, Cursor::Beginning)?;
        let limit = request::limit(&query, config.default_limit, config.max_limit)?;
        let if_none_match = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self { topic, cursor, limit, if_none_match, query })
    }
}

/// The response for `page`: trimmed to `max_page_bytes`, with `ETag`, `Cache-Control:
/// no-cache` and the poll interval hint, or a bodiless 304 when `If-None-Match` matches.
pub fn page_response(
    mut page: Page,
    request: &PageRequest,
    config: &ServerConfig,
) -> Response<Body> {
    trim_to_bytes(&mut page, config.max_page_bytes);
    let tag = etag(&page);
    let not_modified =
        request.if_none_match.as_deref().is_some_and(|v| if_none_match_matches(v, &tag));
    let mut response = if not_modified {
        let mut response = Response::new(pushpull_http::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        json(StatusCode::OK, pushpull_http::wire::encode_page(&page))
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("cursors are header-safe"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers
        .insert(POLL_INTERVAL_HEADER, HeaderValue::from(config.poll_interval.as_millis() as u64));
    response
}

/// Keeps a page within `max_bytes` of payload, but never empties it of messages.
fn trim_to_bytes(page: &mut Page, max_bytes: usize) {
    let mut total = 0usize;
    let keep = page
        .messages
        .iter()
        .position(|m| {
            total += m.payload.len();
            total > max_bytes
        })
        .map_or(page.messages.len(), |over| over.max(1));
    if keep < page.messages.len() {
        page.messages.truncate(keep);
        page.next = page.messages[keep - 1].cursor();
    }
}

impl<B> hyper::service::Service<Request<B>> for Server
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        self.router.call(request)
    }
}
