//! The client half: an event-stream reader that reconnects from its last cursor.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use pushpull_core::{
    Capabilities, Cursor, Delivery, Epoch, Error, ErrorKind, Fetch, Offset, Page, Publication,
    Publish, Receipt, Subscribe, Subscription, Topic,
};
use pushpull_http::{HttpClient, HttpClientConfig};

use crate::NAME;
use crate::config::ClientConfig;
use crate::wire::{CONTENT_TYPE, Parser, decode_event};

/// A client of an SSE server. Cheap to clone; clones share connections.
///
/// `publish` and `fetch` use plain requests. A subscription reads `GET …/events`; when the
/// stream drops (or stays silent past `idle_timeout`), it reconnects with `Last-Event-ID` set
/// to the last position it saw, after the server's `retry:` time and then with backoff, so
/// nothing is lost or repeated. It stops, with a typed error, on `204 No Content` (the server
/// asks it to stop), on any other non-200 status, or on a content type other than
/// `text/event-stream`.
#[derive(Clone, Debug)]
pub struct Client {
    http: HttpClient,
    pages: pushpull_poll::Client,
    config: ClientConfig,
}

impl Client {
    /// A client for the server at `config.url`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let http_config = HttpClientConfig {
            request_timeout: config.request_timeout,
            ..HttpClientConfig::default()
        };
        let http = HttpClient::new(&config.url, NAME, http_config)?;
        let pages = pushpull_poll::ClientConfig {
            url: config.url.clone(),
            request_timeout: config.request_timeout,
            ..pushpull_poll::ClientConfig::default()
        };
        // The page client only serves `fetch` here; errors still name this transport.
        let pages = pushpull_poll::Client::holding(pages, Duration::from_secs(1), NAME)?;
        Ok(Self { http, pages, config })
    }

    /// Opens the event stream of `topic` at `cursor` and checks the response.
    async fn open(&self, topic: &Topic, cursor: Cursor) -> Result<Incoming, Error> {
        let path = match cursor {
            Cursor::After(..) => format!("/v1/topics/{topic}/events"),
            other => format!("/v1/topics/{topic}/events?after={other}"),
        };
        let mut request = self
            .http
            .request(Method::GET, &path)
            .header(header::ACCEPT, CONTENT_TYPE)
            .header(header::CACHE_CONTROL, "no-cache");
        if let Cursor::After(..) = cursor {
            request = request.header("last-event-id", cursor.to_string());
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| {
            self.http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
        })?;
        let response = self.http.send(request, self.config.request_timeout).await?;
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
            _ => return Err(self.http.error_for(response).await.with_retryable(false)),
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
impl Publish for Client {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.http.publish(topic, publication).await
    }
}

#[async_trait]
impl Fetch for Client {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        self.pages.fetch(topic, cursor, limit).await
    }
}

#[async_trait]
impl Subscribe for Client {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let body = self.open(topic, cursor).await?;
        let reader = Reader {
            client: self.clone(),
            topic: topic.clone(),
            resume: cursor,
            last: None,
            body: Some(body),
            parser: Parser::new(),
            retry: Duration::from_secs(1),
            ready: VecDeque::new(),
            failures: 0,
            finished: false,
        };
        Ok(Subscription::new(topic.clone(), cursor, futures::stream::unfold(reader, Reader::next)))
    }
}

impl pushpull_core::Client for Client {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
    }
}

/// One subscription: the open stream, its parser, and where to resume.
struct Reader {
    client: Client,
    topic: Topic,
    /// Where a reconnection starts: the last id the stream set.
    resume: Cursor,
    /// The last message delivered, to drop anything a server repeats.
    last: Option<(Epoch, Offset)>,
    body: Option<Incoming>,
    parser: Parser,
    retry: Duration,
    ready: VecDeque<Delivery>,
    failures: u32,
    finished: bool,
}

impl Reader {
    async fn next(mut self) -> Option<(Result<Delivery, Error>, Self)> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Some((Ok(delivery), self));
            }
            if self.finished {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                match self.reconnect().await {
                    Ok(()) => continue,
                    Err(error) => {
                        self.finished = true;
                        return Some((Err(error), self));
                    }
                }
            };
            let idle = self.client.config.idle_timeout;
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.failures = 0;
                        if let Err(error) = self.take(&data) {
                            self.finished = true;
                            return Some((Err(error), self));
                        }
                    }
                }
                Ok(Some(Err(error))) => {
                    tracing::debug!(topic = %self.topic, %error, "event stream broke; reconnecting");
                    self.body = None;
                }
                Ok(None) => {
                    tracing::debug!(topic = %self.topic, "event stream ended; reconnecting");
                    self.body = None;
                }
                Err(_) => {
                    tracing::debug!(topic = %self.topic, ?idle, "event stream silent; reconnecting");
                    self.body = None;
                }
            }
        }
    }

    /// Parses a chunk into deliveries, and notes where to resume.
    fn take(&mut self, data: &[u8]) -> Result<(), Error> {
        for event in self.parser.feed(data) {
            match decode_event(&self.topic, event).map_err(|e| e.with_transport(NAME))? {
                Delivery::Message(message) => {
                    let position = (message.epoch, message.offset);
                    let repeated = self
                        .last
                        .is_some_and(|(epoch, offset)| epoch == position.0 && offset >= position.1);
                    if !repeated {
                        self.last = Some(position);
                        self.ready.push_back(Delivery::Message(message));
                    }
                }
                gap @ Delivery::Gap(_) => self.ready.push_back(gap),
            }
        }
        if let Ok(cursor @ Cursor::After(..)) = self.parser.last_event_id().parse() {
            self.resume = cursor;
        }
        if let Some(retry) = self.parser.retry() {
            self.retry = retry;
        }
        Ok(())
    }

    /// Waits, then opens the stream again from `resume`. Errors are final ones only.
    async fn reconnect(&mut self) -> Result<(), Error> {
        loop {
            let delay = match self.failures {
                0 => self.retry,
                n => self.retry.max(self.client.config.backoff.delay(n - 1)),
            };
            tokio::time::sleep(delay).await;
            match self.client.open(&self.topic, self.resume).await {
                Ok(body) => {
                    self.body = Some(body);
                    self.parser = Parser::new();
                    return Ok(());
                }
                Err(error) if error.is_retryable() => {
                    self.failures = self.failures.saturating_add(1);
                    tracing::debug!(topic = %self.topic, %error, "reconnect failed; backing off");
                }
                Err(error) => return Err(error),
            }
        }
    }
}
