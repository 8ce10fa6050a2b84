//! The client half: an event-stream reader that reconnects from its last cursor.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pushpull_core::{Backoff, BearerToken, Cursor, Error, ErrorKind, Topic};
use pushpull_http::{Decoded, HttpClient, HttpClientConfig, PushClient, PushReader};

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
pub type SseClient = PushClient<SseReader>;

/// The reading half of [`SseClient`]: how it opens an event stream and parses it.
#[derive(Clone, Debug)]
pub struct SseReader {
    config: ClientConfig,
}

#[async_trait]
impl PushReader for SseReader {
    const NAME: &'static str = NAME;
    type Config = ClientConfig;
    type Decoder = Parser;

    fn from_config(config: ClientConfig) -> Result<(Self, String, HttpClientConfig), Error> {
        let http = HttpClientConfig::endpoint(
            config.request_timeout,
            config.ca_file.clone(),
            config.token.clone(),
        );
        let url = config.url.clone();
        Ok((Self { config }, url, http))
    }

    fn token(config: &mut ClientConfig) -> &mut BearerToken {
        &mut config.token
    }

    /// Opens the event stream of `topic` at `cursor` and checks the response.
    async fn open(
        &self,
        http: &HttpClient,
        topic: &Topic,
        cursor: Cursor,
    ) -> Result<Incoming, Error> {
        let path = match cursor {
            Cursor::After(..) => format!("/v1/topics/{topic}/events"),
            other => format!("/v1/topics/{topic}/events?after={other}"),
        };
        let request = || {
            let mut request = http
                .request(Method::GET, &path)
                .header(header::ACCEPT, CONTENT_TYPE)
                .header(header::CACHE_CONTROL, "no-cache");
            if let Cursor::After(..) = cursor {
                request = request.header("last-event-id", cursor.to_string());
            }
            request.body(Full::new(Bytes::new())).map_err(|e| {
                http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
            })
        };
        // Safe to repeat: a pooled connection that died with the network is retried at once.
        let response = http.send_idempotent(request, self.config.request_timeout).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NO_CONTENT => {
                return Err(http
                    .error(
                        ErrorKind::Closed,
                        "the server answered 204 No Content: it asks clients to stop",
                    )
                    .with_retryable(false));
            }
            // 5xx, 429 and 408 are retried by the reopening reader; the rest end it.
            _ => return Err(http.error_for(response).await),
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.trim_start().starts_with(CONTENT_TYPE) {
            return Err(http
                .error(
                    ErrorKind::Protocol,
                    format!("expected {CONTENT_TYPE}, got content type {content_type:?}"),
                )
                .with_retryable(false));
        }
        Ok(response.into_body())
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
