//! The server half: `GET /v1/topics/{topic}/events`, one `text/event-stream` per subscriber.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use pushpull_core::{Broker, Cursor, Delivery, Encodings, Error, ErrorKind};
use pushpull_http::{
    Gauge, HandlerResult, HttpRequest, Params, PushFormat, Route, Router, Shutdown, push_response,
    query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{CONTENT_TYPE, HEARTBEAT, encode_gap, encode_message, preamble};

/// The route of a topic's event stream.
pub const EVENTS_PATH: &str = "/v1/topics/{topic}/events";

/// The SSE server over a broker: a cheap-`Clone` tower (and hyper) service serving publishing,
/// pages and event streams; its [`routes`](Self::routes) mount event streams beside other
/// transports'.
///
/// A stream starts where `Last-Event-ID` says (a browser's EventSource sends it when it
/// reconnects), else where `?after=` says, else at `latest`. It reads the broker's shared log
/// by cursor and writes only as fast as the client reads, so a client that stops reading
/// costs a bounded buffer and, once retention passes it, gets a gap instead of unbounded memory.
#[derive(Clone, Debug)]
pub struct SseServer {
    streams: Streams,
    router: Router,
}

/// What the event-stream route needs; the routes hold this, not the [`SseServer`] (whose router
/// holds the routes).
#[derive(Clone)]
struct Streams {
    broker: Arc<dyn Broker>,
    config: Arc<ServerConfig>,
    open: Gauge,
    meter: pushpull_http::metrics::DeliveryMeter,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").field("config", &self.config).field("open", &self.open).finish()
    }
}

impl SseServer {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let api = pushpull_http::api(broker.clone(), pushpull_http::PageConfig::default(), None);
        let meter = pushpull_http::metrics::DeliveryMeter::new(crate::NAME);
        let streams = Streams { broker, config: Arc::new(config), open: Gauge::new(), meter };
        let router = api.with(streams.routes());
        Ok(Self { streams, router })
    }

    /// Event streams open right now.
    pub fn open_streams(&self) -> usize {
        self.streams.open.get()
    }

    /// The event-stream route, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        self.streams.routes()
    }

    /// The router it serves: publishing, the page route (for clients' `fetch`) and event
    /// streams.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(SseServer);

impl pushpull_http::TransportServer for SseServer {
    const NAME: &'static str = crate::NAME;
    type Config = ServerConfig;

    fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        SseServer::new(broker, config)
    }

    fn routes(&self) -> Vec<Route> {
        SseServer::routes(self)
    }

    fn gauges(&self) -> Vec<(&'static str, pushpull_http::Reading)> {
        let open = self.streams.open.clone();
        vec![("sse_open_streams", Box::new(move || open.get()))]
    }
}

impl Streams {
    fn routes(&self) -> Vec<Route> {
        let streams = self.clone();
        vec![Route::new(Method::GET, EVENTS_PATH, move |req: HttpRequest, params: Params| {
            let streams = streams.clone();
            async move { streams.stream(req, params).await }
        })]
    }

    async fn stream(&self, req: HttpRequest, params: Params) -> HandlerResult {
        let topic = request::topic(&params)?;
        let cursor = start_cursor(&req)?;
        let subscription = self
            .broker
            .subscribe(&topic, cursor)
            .await
            .inspect_err(|e| pushpull_http::metrics::broker_error("subscribe", e))?;
        let format = PushFormat {
            content_type: CONTENT_TYPE,
            first: preamble(subscription.cursor(), self.config.retry),
            encode: Box::new(|delivery| {
                vec![match delivery {
                    // Encoded once per message, shared by every stream that pushes it.
                    Delivery::Message(message) => {
                        message.encodings.get_or_encode(Encodings::SSE, || encode_message(message))
                    }
                    Delivery::Gap(gap) => encode_gap(gap),
                }]
            }),
            heartbeat_chunk: Bytes::from_static(HEARTBEAT),
            heartbeat: self.config.heartbeat,
            meter: self.meter.clone(),
        };
        Ok(push_response(subscription, format, Shutdown::of(&req), self.open.hold()))
    }
}

/// `Last-Event-ID` first (it is newer: EventSource repeats the original URL when it
/// reconnects), then `?after=`, then `latest`.
fn start_cursor(req: &HttpRequest) -> Result<Cursor, Error> {
    if let Some(id) = req.headers().get("last-event-id") {
        let id = id.to_str().map_err(|_| {
            Error::new(ErrorKind::InvalidCursor, "the Last-Event-ID header is not ASCII")
        })?;
        if !id.is_empty() {
            return id.parse().map_err(|e: Error| {
                Error::new(ErrorKind::InvalidCursor, format!("Last-Event-ID: {}", e.message()))
            });
        }
    }
    request::cursor(req, &query_params(req), Cursor::Latest)
}
