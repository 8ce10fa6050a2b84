//! The server half: `GET /v1/topics/{topic}/stream`, one long chunked response per reader.

use std::sync::Arc;

use http::{Method, header};
use pushpull_core::{Client, Cursor, Error};
use pushpull_http::{
    Gauge, HandlerResult, HttpRequest, Params, PushFormat, Route, Router, Shutdown, push_response,
    query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{Framing, Record, encode, encode_plain};

/// The route of a topic's stream.
pub const STREAM_PATH: &str = "/v1/topics/{topic}/stream";

/// The streaming server over a broker: a cheap-`Clone` handle whose [`routes`](Self::routes)
/// serve streams.
///
/// A stream starts at `?after=` (or `Pushpull-Cursor`), else `latest`, with a `start` record;
/// then a record per message or gap, flushed as it is read from the log, and a heartbeat
/// record when idle. `Accept: application/vnd.pushpull.stream` picks binary records; anything
/// else gets NDJSON. Like every push transport here, it writes only as fast as the reader
/// reads, and a reader left behind by retention gets a gap.
#[derive(Clone)]
pub struct Server {
    broker: Arc<dyn Client>,
    config: Arc<ServerConfig>,
    open: Gauge,
}

impl Server {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Client>, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self { broker, config: Arc::new(config), open: Gauge::new() })
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.open.get()
    }

    /// The stream route, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        let server = self.clone();
        vec![Route::new(Method::GET, STREAM_PATH, move |req: HttpRequest, params: Params| {
            let server = server.clone();
            async move { server.stream(req, params).await }
        })]
    }

    /// A router with publishing, the page route (for clients' `fetch`) and streams.
    pub fn router(&self) -> Router {
        pushpull_http::publishing(self.broker.clone())
            .with(pushpull_poll::routes(self.broker.clone(), self.config.page.clone()))
            .with(self.routes())
    }

    async fn stream(&self, req: HttpRequest, params: Params) -> HandlerResult {
        let topic = request::topic(&params)?;
        let cursor = request::cursor(&req, &query_params(&req), Cursor::Latest)?;
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let framing = Framing::from_accept(accept);
        let subscription = self.broker.subscribe(&topic, cursor).await?;
        let format = PushFormat {
            content_type: framing.content_type(),
            first: encode_plain(&Record::Start { cursor: subscription.cursor() }, framing),
            encode: Box::new(move |delivery| encode(delivery, framing)),
            heartbeat_chunk: encode_plain(&Record::Heartbeat, framing),
            heartbeat: self.config.heartbeat,
        };
        Ok(push_response(subscription, format, Shutdown::of(&req), self.open.hold()))
    }
}
