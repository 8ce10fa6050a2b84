//! The client half: an event-stream reader that reconnects from its last cursor.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pushpull_core::{
    Backoff, Capabilities, Cursor, Error, ErrorKind, Fetch, Page, Publication, Publish, Receipt,
    Subscribe, Subscription, Topic,
};
use pushpull_http::{Decoded, HttpClient, HttpClientConfig};

use crate::NAME;
use crate::config::ClientConfig;
use crate::wire::{CONTENT_TYPE, Parser, decode_event};

/// A client of an SSE server. Cheap to clone; clones share connections.
///
/// `publish` and `fetch` use plain requests. A subscription reads `GET …/events`; when the
/// stream drops (or stays silent past `idle_timeout`), it reconnects with `Last-Event-ID` set
/// to the last position it saw, after the server's `retry:` time and then with backoff, so
/// nothing is lost or repeated. What a load balancer answers during a deploy (502, 503, 504,
/// any retryable status, honouring `Retry-After`), refused or reset connections and time-outs
/// are retried the same way. It stops, with a typed error, only on what a retry cannot change:
/// `204 No Content` (the server asks it to stop), a status such as 400, 401, 403, 404 or 410,
/// or a content type other than `text/event-stream`.
#[derive(Clone, Debug)]
pub struct SseClient {
    http: HttpClient,
    config: ClientConfig,
}

impl SseClient {
    /// A client for the server at `config.url`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let http_config = {
            let mut built = HttpClientConfig::default();
            built.request_timeout = config.request_timeout;
            built.ca_file = config.ca_file.clone();
            built.token = config.token.clone();
            built
        };
        let http = HttpClient::new(&config.url, NAME, http_config)?;
        Ok(Self { http, config })
    }

    /// Opens the event stream of `topic` at `cursor` and checks the response.
    async fn open(&self, topic: &Topic, cursor: Cursor) -> Result<Incoming, Error> {
        let path = match cursor {
            Cursor::After(..) => format!("/v1/topics/{topic}/events"),
            other => format!("/v1/topics/{topic}/events?after={other}"),
        };
        let request = || {
            let mut request = self
                .http
                .request(Method::GET, &path)
                .header(header::ACCEPT, CONTENT_TYPE)
                .header(header::CACHE_CONTROL, "no-cache");
            if let Cursor::After(..) = cursor {
                request = request.header("last-event-id", cursor.to_string());
            }
            request.body(Full::new(Bytes::new())).map_err(|e| {
                self.http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
            })
        };
        // Safe to repeat: a pooled connection that died with the network is retried at once.
        let response = self.http.send_idempotent(request, self.config.request_timeout).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NO_CONTENT => {
                return Err(self
                    .http
                    .error(
                        ErrorKind::Closed,
                        "the server answered 204 No Content: it asks clients to stop",
                    )
                    .with_retryable(false));
            }
            // 5xx, 429 and 408 are retried by the reopening reader; the rest end it.
            _ => return Err(self.http.error_for(response).await),
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.trim_start().starts_with(CONTENT_TYPE) {
            return Err(self
                .http
                .error(
                    ErrorKind::Protocol,
                    format!("expected {CONTENT_TYPE}, got content type {content_type:?}"),
                )
                .with_retryable(false));
        }
        Ok(response.into_body())
    }
}

#[async_trait]
impl Publish for SseClient {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.http.publish(topic, publication).await
    }
}

#[async_trait]
impl Fetch for SseClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        pushpull_http::fetch_page(&self.http, topic, cursor, limit).await
    }
}

#[async_trait]
impl Subscribe for SseClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        pushpull_http::reopening(self.clone(), topic.clone(), cursor)
            .await
            .map_err(|e| e.with_transport(NAME))
    }
}

#[async_trait]
impl pushpull_http::Reopen for SseClient {
    type Decoder = Parser;

    async fn open(&self, topic: &Topic, cursor: Cursor) -> Result<Incoming, Error> {
        SseClient::open(self, topic, cursor).await
    }

    fn decoder(&self) -> Parser {
        Parser::new()
    }

    fn decode(&self, parser: &mut Parser, topic: &Topic, chunk: &[u8]) -> Result<Decoded, Error> {
        let deliveries = parser
            .feed(chunk)
            .map_err(|e| e.with_transport(NAME))?
            .into_iter()
            .map(|event| decode_event(topic, event).map_err(|e| e.with_transport(NAME)))
            .collect::<Result<_, _>>()?;
        // The last id the stream set: a message's, a gap's, or the preamble's starting position.
        let position = parser.last_event_id().parse().ok();
        Ok(Decoded { deliveries, position, retry: parser.retry() })
    }

    fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }

    fn backoff(&self) -> &Backoff {
        &self.config.backoff
    }
}

impl pushpull_core::Client for SseClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
    }
}

pushpull_core::connect_by_new!(SseClient, ClientConfig, crate::NAME);
