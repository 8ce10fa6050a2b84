//! The client half: a record reader that reconnects from its last cursor.

use std::collections::VecDeque;

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
use crate::config::{ClientConfig, FramingChoice};
use crate::wire::{Decoder, Framing, Record, delivery};

/// A client of a streaming server. Cheap to clone; clones share connections.
///
/// `publish` and `fetch` use plain requests. A subscription reads `GET …/stream`; when the
/// stream ends, breaks, or stays silent past `idle_timeout`, it reopens it from the cursor of
/// the last record it read, with backoff, dropping anything already delivered. A non-200
/// answer or a wrong content type stops it with a typed error.
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
            max_response_bytes: config.max_payload.saturating_mul(2),
            ..HttpClientConfig::default()
        };
        let http = HttpClient::new(&config.url, NAME, http_config)?;
        let pages = pushpull_poll::ClientConfig {
            url: config.url.clone(),
            request_timeout: config.request_timeout,
            ..pushpull_poll::ClientConfig::default()
        };
        let pages = pushpull_poll::Client::holding(pages, std::time::Duration::from_secs(1), NAME)?;
        Ok(Self { http, pages, config })
    }

    fn framing(&self) -> Framing {
        match self.config.framing {
            FramingChoice::Binary => Framing::Binary,
            FramingChoice::Ndjson => Framing::Ndjson,
        }
    }

    async fn open(&self, topic: &Topic, cursor: Cursor) -> Result<Incoming, Error> {
        let framing = self.framing();
        let request = self
            .http
            .request(Method::GET, &format!("/v1/topics/{topic}/stream?after={cursor}"))
            .header(header::ACCEPT, framing.content_type())
            .body(Full::new(Bytes::new()))
            .map_err(|e| {
                self.http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
            })?;
        let response = self.http.send(request, self.config.request_timeout).await?;
        if response.status() != StatusCode::OK {
            return Err(self.http.error_for(response).await.with_retryable(false));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with(framing.content_type()) {
            return Err(self
                .http
                .error(
                    ErrorKind::Protocol,
                    format!(
                        "expected {}, got content type {content_type:?}",
                        framing.content_type()
                    ),
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
            decoder: Decoder::new(self.framing(), self.config.max_payload),
            client: self.clone(),
            topic: topic.clone(),
            resume: cursor,
            last: None,
            body: Some(body),
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

struct Reader {
    client: Client,
    topic: Topic,
    resume: Cursor,
    last: Option<(Epoch, Offset)>,
    body: Option<Incoming>,
    decoder: Decoder,
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
                if let Err(error) = self.reconnect().await {
                    self.finished = true;
                    return Some((Err(error), self));
                }
                continue;
            };
            let idle = self.client.config.idle_timeout;
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    self.failures = 0;
                    if let Err(error) = self.take(&data) {
                        self.finished = true;
                        return Some((Err(error.with_transport(NAME)), self));
                    }
                }
                Ok(Some(Err(_)) | None) | Err(_) => {
                    tracing::debug!(topic = %self.topic, "stream ended; reopening");
                    self.body = None;
                }
            }
        }
    }

    fn take(&mut self, data: &[u8]) -> Result<(), Error> {
        for (record, payload) in self.decoder.feed(data)? {
            if let Record::Start { cursor } = &record {
                self.resume = *cursor;
            }
            let Some(delivery) = delivery(record, payload)? else { continue };
            if let Delivery::Message(message) = &delivery {
                let position = (message.epoch, message.offset);
                if self
                    .last
                    .is_some_and(|(epoch, offset)| epoch == position.0 && offset >= position.1)
                {
                    continue;
                }
                self.last = Some(position);
            }
            self.resume = delivery.cursor();
            self.ready.push_back(delivery);
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<(), Error> {
        loop {
            tokio::time::sleep(self.client.config.backoff.delay(self.failures)).await;
            match self.client.open(&self.topic, self.resume).await {
                Ok(body) => {
                    self.body = Some(body);
                    self.decoder =
                        Decoder::new(self.client.framing(), self.client.config.max_payload);
                    return Ok(());
                }
                Err(error) if error.is_retryable() => {
                    self.failures = self.failures.saturating_add(1);
                    tracing::debug!(topic = %self.topic, %error, "reopen failed; backing off");
                }
                Err(error) => return Err(error),
            }
        }
    }
}
