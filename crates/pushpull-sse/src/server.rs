//! The server half: `GET /v1/topics/{topic}/events`, one `text/event-stream` per subscriber.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use pushpull_core::{Client, Cursor, Delivery, Error, ErrorKind};
use pushpull_http::{
    Gauge, HandlerResult, HttpRequest, Params, PushFormat, Route, Router, Shutdown, push_response,
    query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{CONTENT_TYPE, HEARTBEAT, encode_gap, encode_message, preamble};

/// The route of a topic's event stream.
pub const EVENTS_PATH: &str = "/v1/topics/{topic}/events";

/// The SSE server over a broker: a cheap-`Clone` handle whose [`routes`](Self::routes) serve
/// event streams.
///
/// A stream starts where `Last-Event-ID` says (a browser's EventSource sends it when it
/// reconnects), else where `?after=` says, else at `latest`. It reads the broker's shared log
/// by cursor and writes only as fast as the client reads, so a client that stops reading
/// costs a bounded buffer and, once retention passes it, gets a gap instead of unbounded memory.
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

    /// Event streams open right now.
    pub fn open_streams(&self) -> usize {
        self.open.get()
    }

    /// The event-stream route, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        let server = self.clone();
        vec![Route::new(Method::GET, EVENTS_PATH, move |req: HttpRequest, params: Params| {
            let server = server.clone();
            async move { server.stream(req, params).await }
        })]
    }

    /// A router with publishing, the page route (for clients' `fetch`) and event streams.
    pub fn router(&self) -> Router {
        pushpull_http::publishing(self.broker.clone())
            .with(pushpull_poll::routes(self.broker.clone(), self.config.page.clone()))
            .with(self.routes())
    }

    async fn stream(&self, req: HttpRequest, params: Params) -> HandlerResult {
        let topic = request::topic(&params)?;
        let cursor = start_cursor(&req)?;
        let subscription = self.broker.subscribe(&topic, cursor).await?;
        let format = PushFormat {
            content_type: CONTENT_TYPE,
            first: preamble(subscription.cursor(), self.config.retry),
            encode: Box::new(|delivery| {
                vec![match delivery {
                    Delivery::Message(message) => encode_message(message),
                    Delivery::Gap(gap) => encode_gap(gap),
                }]
            }),
            heartbeat_chunk: Bytes::from_static(HEARTBEAT),
            heartbeat: self.config.heartbeat,
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
