//! The server half: `GET /v1/topics/{topic}/stream`, one long chunked response per reader.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pushpull_core::{Client, Cursor, Error, Subscription};
use pushpull_http::{
    Gauge, HandlerResult, Held, HttpRequest, Params, Route, Router, Shutdown, query_params, request,
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
        let start = encode_plain(&Record::Start { cursor: subscription.cursor() }, framing);
        let state = StreamState {
            subscription,
            framing,
            heartbeat: self.config.heartbeat,
            shutdown: Shutdown::of(&req),
            queue: VecDeque::from([start]),
            _open: self.open.hold(),
        };
        let body = StreamBody::new(futures::stream::unfold(state, StreamState::next).map(Ok));
        let mut response = Response::new(BodyExt::boxed_unsync(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(framing.content_type()));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }
}

struct StreamState {
    subscription: Subscription,
    framing: Framing,
    heartbeat: Duration,
    shutdown: Shutdown,
    /// The chunks of the record being written: a large payload is written in slices.
    queue: VecDeque<Bytes>,
    _open: Held,
}

impl StreamState {
    async fn next(mut self) -> Option<(Frame<Bytes>, Self)> {
        if let Some(chunk) = self.queue.pop_front() {
            return Some((Frame::data(chunk), self));
        }
        tokio::select! {
            delivery = self.subscription.next() => match delivery? {
                Ok(delivery) => self.queue.extend(encode(&delivery, self.framing)),
                Err(error) => {
                    tracing::warn!(%error, "stream ended by a broker error");
                    return None;
                }
            },
            () = tokio::time::sleep(self.heartbeat) => {
                self.queue.push_back(encode_plain(&Record::Heartbeat, self.framing));
            }
            () = self.shutdown.wait() => return None,
        }
        let chunk = self.queue.pop_front()?;
        Some((Frame::data(chunk), self))
    }
}
