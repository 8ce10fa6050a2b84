//! The client half: a record reader that reconnects from its last cursor.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pushpull_core::{Backoff, BearerToken, Cursor, Error, ErrorKind, Topic};
use pushpull_http::{Decoded, HttpClient, HttpClientConfig, PushClient, PushReader};

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
pub type StreamClient = PushClient<StreamReader>;

/// The reading half of [`StreamClient`]: how it opens a stream and decodes its records.
#[derive(Clone, Debug)]
pub struct StreamReader {
    config: ClientConfig,
}

impl StreamReader {
    fn framing(&self) -> Framing {
        match self.config.framing {
            FramingChoice::Binary => Framing::Binary,
            FramingChoice::Ndjson => Framing::Ndjson,
        }
    }
}

#[async_trait]
impl PushReader for StreamReader {
    const NAME: &'static str = NAME;
    type Config = ClientConfig;
    type Decoder = Decoder;

    fn from_config(config: ClientConfig) -> Result<(Self, String, HttpClientConfig), Error> {
        let mut http = HttpClientConfig::endpoint(
            config.request_timeout,
            config.ca_file.clone(),
            config.token.clone(),
        );
        http.max_response_bytes = config.max_payload.saturating_mul(2);
        let url = config.url.clone();
        Ok((Self { config }, url, http))
    }

    fn token(config: &mut ClientConfig) -> &mut BearerToken {
        &mut config.token
    }

    async fn open(
        &self,
        http: &HttpClient,
        topic: &Topic,
        cursor: Cursor,
    ) -> Result<Incoming, Error> {
        let framing = self.framing();
        let path = format!("/v1/topics/{topic}/stream?after={cursor}");
        let request = || {
            http.request(Method::GET, &path)
                .header(header::ACCEPT, framing.content_type())
                .body(Full::new(Bytes::new()))
                .map_err(|e| {
                    http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
                })
        };
        // Safe to repeat: a pooled connection that died with the network is retried at once.
        let response = http.send_idempotent(request, self.config.request_timeout).await?;
        if response.status() != StatusCode::OK {
            // 5xx, 429 and 408 are retried by the reopening reader; the rest end it.
            return Err(http.error_for(response).await);
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with(framing.content_type()) {
            return Err(http
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

    fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }

    fn backoff(&self) -> &Backoff {
        &self.config.backoff
    }
}
