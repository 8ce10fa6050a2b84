//! The server half: `GET /v1/topics/{topic}/stream`, one long chunked response per reader.

use std::sync::Arc;

use http::{Method, header};
use pushpull_core::{Broker, Cursor, Error};
use pushpull_http::{
    Gauge, HandlerResult, HttpRequest, Params, PushFormat, Route, Router, Shutdown, push_response,
    query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{Framing, Record, encode, encode_plain};

/// The route of a topic's stream.
pub const STREAM_PATH: &str = "/v1/topics/{topic}/stream";

/// The streaming server over a broker: a cheap-`Clone` tower (and hyper) service serving
/// publishing, pages and streams; its [`routes`](Self::routes) mount streams beside other
/// transports'.
///
/// A stream starts at `?after=` (or `Pushpull-Cursor`), else `latest`, with a `start` record;
/// then a record per message or gap, flushed as it is read from the log, and a heartbeat
/// record when idle. `Accept: application/vnd.pushpull.stream` picks binary records; anything
/// else gets NDJSON. Like every push transport here, it writes only as fast as the reader
/// reads, and a reader left behind by retention gets a gap.
#[derive(Clone, Debug)]
pub struct StreamServer {
    streams: Streams,
    router: Router,
}

/// What the stream route needs; the routes hold this, not the [`StreamServer`] (whose router holds
/// the routes).
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

impl StreamServer {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let api = pushpull_http::api(broker.clone(), pushpull_http::PageConfig::default(), None);
        let meter = pushpull_http::metrics::DeliveryMeter::new(crate::NAME);
        let streams = Streams { broker, config: Arc::new(config), open: Gauge::new(), meter };
        let router = api.with(streams.routes());
        Ok(Self { streams, router })
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.streams.open.get()
    }

    /// The stream route, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        self.streams.routes()
    }

    /// The router it serves: publishing, the page route (for clients' `fetch`) and streams.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(StreamServer);

impl pushpull_http::TransportServer for StreamServer {
    const NAME: &'static str = crate::NAME;
    type Config = ServerConfig;

    fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        StreamServer::new(broker, config)
    }

    fn routes(&self) -> Vec<Route> {
        StreamServer::routes(self)
    }

    fn gauges(&self) -> Vec<(&'static str, pushpull_http::Reading)> {
        let open = self.streams.open.clone();
        vec![("stream_open_streams", Box::new(move || open.get()))]
    }
}

impl Streams {
    fn routes(&self) -> Vec<Route> {
        let streams = self.clone();
        vec![Route::new(Method::GET, STREAM_PATH, move |req: HttpRequest, params: Params| {
            let streams = streams.clone();
            async move { streams.stream(req, params).await }
        })]
    }

    async fn stream(&self, req: HttpRequest, params: Params) -> HandlerResult {
        let topic = request::topic(&params)?;
        let cursor = request::cursor(&req, &query_params(&req), Cursor::Latest)?;
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let framing = Framing::from_accept(accept);
        let subscription = self
            .broker
            .subscribe(&topic, cursor)
            .await
            .inspect_err(|e| pushpull_http::metrics::broker_error("subscribe", e))?;
        let format = PushFormat {
            content_type: framing.content_type(),
            first: encode_plain(&Record::Start { cursor: subscription.cursor() }, framing),
            encode: Box::new(move |delivery| encode(delivery, framing)),
            heartbeat_chunk: encode_plain(&Record::Heartbeat, framing),
            heartbeat: self.config.heartbeat,
            meter: self.meter.clone(),
        };
        Ok(push_response(subscription, format, Shutdown::of(&req), self.open.hold()))
    }
}
