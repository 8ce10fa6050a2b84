//! The client half: a record reader that reconnects from its last cursor.

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
use crate::config::{ClientConfig, FramingChoice};
use crate::wire::{Decoder, Framing, Record, delivery};

/// A client of a streaming server. Cheap to clone; clones share connections.
///
/// `publish` and `fetch` use plain requests. A subscription reads `GET …/stream`; when the
/// stream ends, breaks, or stays silent past `idle_timeout`, it reopens it from the cursor of
/// the last record it read, with backoff, dropping anything already delivered. Retryable
/// answers (5xx but 501 and 505, 429 with its `Retry-After`, 408) are retried the same way; any
/// other non-200 answer or a wrong content type stops it with a typed error.
#[derive(Clone, Debug)]
pub struct StreamClient {
    http: HttpClient,
    config: ClientConfig,
}

impl StreamClient {
    /// A client for the server at `config.url`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let http_config = {
            let mut built = HttpClientConfig::default();
            built.request_timeout = config.request_timeout;
            built.ca_file = config.ca_file.clone();
            built.token = config.token.clone();
            built.max_response_bytes = config.max_payload.saturating_mul(2);
            built
        };
        let http = HttpClient::new(&config.url, NAME, http_config)?;
        Ok(Self { http, config })
    }

    fn framing(&self) -> Framing {
        match self.config.framing {
            FramingChoice::Binary => Framing::Binary,
            FramingChoice::Ndjson => Framing::Ndjson,
        }
    }

    async fn open(&self, topic: &Topic, cursor: Cursor) -> Result<Incoming, Error> {
        let framing = self.framing();
        let path = format!("/v1/topics/{topic}/stream?after={cursor}");
        let request = || {
            self.http
                .request(Method::GET, &path)
                .header(header::ACCEPT, framing.content_type())
                .body(Full::new(Bytes::new()))
                .map_err(|e| {
                    self.http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
                })
        };
        // Safe to repeat: a pooled connection that died with the network is retried at once.
        let response = self.http.send_idempotent(request, self.config.request_timeout).await?;
        if response.status() != StatusCode::OK {
            // 5xx, 429 and 408 are retried by the reopening reader; the rest end it.
            return Err(self.http.error_for(response).await);
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
impl Publish for StreamClient {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.http.publish(topic, publication).await
    }
}

#[async_trait]
impl Fetch for StreamClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        pushpull_http::fetch_page(&self.http, topic, cursor, limit).await
    }
}

#[async_trait]
impl Subscribe for StreamClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        pushpull_http::reopening(self.clone(), topic.clone(), cursor)
            .await
            .map_err(|e| e.with_transport(NAME))
    }
}

#[async_trait]
impl pushpull_http::Reopen for StreamClient {
    type Decoder = Decoder;

    async fn open(&self, topic: &Topic, cursor: Cursor) -> Result<Incoming, Error> {
        StreamClient::open(self, topic, cursor).await
    }

    fn decoder(&self) -> Decoder {
        Decoder::new(self.framing(), self.config.max_payload)
    }

    fn decode(&self, decoder: &mut Decoder, _: &Topic, chunk: &[u8]) -> Result<Decoded, Error> {
        let mut decoded = Decoded::default();
        for (record, payload) in decoder.feed(chunk).map_err(|e| e.with_transport(NAME))? {
            if let Record::Start { cursor } = &record {
                decoded.position = Some(*cursor);
            }
            if let Some(delivery) = delivery(record, payload).map_err(|e| e.with_transport(NAME))? {
                decoded.deliveries.push(delivery);
            }
        }
        Ok(decoded)
    }

    fn idle_timeout(&self) -> std::time::Duration {
        self.config.idle_timeout
    }

    fn backoff(&self) -> &Backoff {
        &self.config.backoff
    }
}

impl pushpull_core::Client for StreamClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
    }
}

pushpull_core::connect_by_new!(StreamClient, ClientConfig, crate::NAME);
