//! The client half: a record reader that reconnects from its last cursor.

use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderValue, header};
use pushpull_core::{Backoff, BearerToken, CursorSet, Error};
use pushpull_http::{Decoded, HttpClientConfig, Opening, PushClient, PushReader, Scope, Target};

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
///
/// Many topics, prefixes included, follow on one stream (`GET /v1/stream`, through
/// [`follow`](pushpull_core::follow)): it starts with a `cursors` record, and each record
/// names its topic and cursor.
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

    fn opening(&self, target: Target<'_>) -> Opening {
        let path = match target {
            Target::One(topic, cursor) => format!("/v1/topics/{topic}/stream?after={cursor}"),
            Target::Many(query) => format!("/v1/stream?{query}"),
        };
        let accept = HeaderValue::from_static(self.framing().content_type());
        Opening { path, headers: vec![(header::ACCEPT, accept)] }
    }

    fn content_type(&self) -> &'static str {
        self.framing().content_type()
    }

    fn decoder(&self) -> Decoder {
        Decoder::new(self.framing(), self.config.max_payload)
    }

    fn decode(
        &self,
        decoder: &mut Decoder,
        scope: Scope<'_>,
        chunk: &[u8],
    ) -> Result<Decoded, Error> {
        let mut decoded = Decoded::default();
        for (record, payload) in decoder.feed(chunk).map_err(|e| e.with_transport(NAME))? {
            match (&record, scope) {
                (Record::Start { cursor }, _) => decoded.position = Some(*cursor),
                (Record::Cursors { cursors }, Scope::Many(keys)) => {
                    let set =
                        CursorSet::parse(cursors, keys).map_err(|e| e.with_transport(NAME))?;
                    decoded.cursors = Some(set);
                }
                _ => {}
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
