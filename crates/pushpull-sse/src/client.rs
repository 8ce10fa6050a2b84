//! The client half: an event-stream reader that reconnects from its last cursor.

use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, header};
use pushpull_core::{Backoff, BearerToken, Cursor, CursorSet, Error};
use pushpull_http::{Decoded, HttpClientConfig, Opening, PushClient, PushReader, Scope, Target};

use crate::NAME;
use crate::config::ClientConfig;
use crate::wire::{CONTENT_TYPE, Parser, decode_event, decode_many};

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
///
/// Many topics, prefixes included, follow on one stream (`GET /v1/events`, through
/// [`follow`](pushpull_core::follow)): each event's `topic:` field names its topic and its
/// `id:` is the cursor set that resumes them all.
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

    fn opening(&self, target: Target<'_>) -> Opening {
        let mut headers = vec![
            (header::ACCEPT, HeaderValue::from_static(CONTENT_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        let path = match target {
            Target::One(topic, cursor @ Cursor::After(..)) => {
                let id = HeaderValue::from_str(&cursor.to_string()).expect("a cursor is ASCII");
                headers.push((HeaderName::from_static("last-event-id"), id));
                format!("/v1/topics/{topic}/events")
            }
            Target::One(topic, start) => format!("/v1/topics/{topic}/events?after={start}"),
            // The client keeps the set itself: each event's id is its message's cursor.
            Target::Many(query) => format!("/v1/events?{query}&event_ids=message"),
        };
        Opening { path, headers }
    }

    fn content_type(&self) -> &'static str {
        CONTENT_TYPE
    }

    fn decoder(&self) -> Parser {
        Parser::new()
    }

    fn decode(
        &self,
        parser: &mut Parser,
        scope: Scope<'_>,
        chunk: &[u8],
    ) -> Result<Decoded, Error> {
        let events = parser.feed(chunk).map_err(|e| e.with_transport(NAME))?;
        let mut decoded = Decoded { retry: parser.retry(), ..Decoded::default() };
        match scope {
            Scope::One(topic) => {
                for event in events {
                    decoded
                        .deliveries
                        .push(decode_event(topic, event).map_err(|e| e.with_transport(NAME))?);
                }
                // The last id the stream set: a message's, a gap's, or the preamble's position.
                decoded.position = parser.last_event_id().parse().ok();
            }
            Scope::Many(keys) => {
                for event in events {
                    decoded
                        .deliveries
                        .push(decode_many(keys, event).map_err(|e| e.with_transport(NAME))?);
                }
                // The set the stream announced last: the preamble's, or the last event's.
                let id = parser.last_event_id();
                if CursorSet::is_set(id) {
                    let set = CursorSet::parse(id, keys).map_err(|e| e.with_transport(NAME))?;
                    decoded.cursors = Some(set);
                }
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
