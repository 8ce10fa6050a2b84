//! One client body for the one-way push transports (Server-Sent Events, chunked streaming):
//! publish and fetch over the shared HTTP API, subscriptions read from one long response and
//! reopened from their cursor. A transport says only how it opens and decodes its response.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pushpull_core::{
    Backoff, BearerToken, Capabilities, Client, Connect, Cursor, CursorSet, Delivery, Error,
    ErrorKind, Fetch, FollowRequest, MultiSubscription, Page, Publication, Publish, Receipt,
    Selector, Subscribe, Subscription, Topic,
};
use serde::de::DeserializeOwned;

use crate::client::{HttpClient, HttpClientConfig};

/// What a push response is opened for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One topic, from a cursor.
    One(&'a Topic, Cursor),
    /// Many topics: the query (`topic=…&after=…`, encoded) for the transport's route of many
    /// topics, as [`ManyQuery::query`](crate::ManyQuery::query) writes it.
    Many(&'a str),
}

/// What a response being decoded follows.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// One topic.
    One(&'a Topic),
    /// Many topics: deliveries name their topics, and cursor sets are written relative to
    /// these selectors.
    Many(&'a [Selector]),
}

/// The request that opens a push response.
#[derive(Debug, Clone)]
pub struct Opening {
    /// The path and query, such as `/v1/topics/ticker/events`.
    pub path: String,
    /// Headers to send (`Accept`, `Last-Event-ID`, …).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What one chunk of a response held.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Deliveries completed by the chunk, in order.
    pub deliveries: Vec<Delivery>,
    /// Where the stream said it stands (a start record, an SSE id), before the deliveries.
    pub position: Option<Cursor>,
    /// On a stream of many topics, the cursor set it announced last (its first record, an SSE
    /// id).
    pub cursors: Option<CursorSet>,
    /// How long the server asked clients to wait before reconnecting.
    pub retry: Option<Duration>,
}

/// The reading half of a one-way push transport's client: how it opens a topic's response and
/// decodes it. [`PushClient`] does the rest.
#[async_trait]
pub trait PushReader: Clone + Debug + Send + Sync + 'static {
    /// The transport's name, in configuration and errors.
    const NAME: &'static str;
    /// The transport's client settings, all optional (`#[serde(default)]`) but `url`.
    type Config: DeserializeOwned + Send + 'static;
    /// Decodes one response's bytes, chunk by chunk.
    type Decoder: Send + 'static;

    /// The reader, the server's base URL and the HTTP client's settings, from the transport's
    /// settings.
    fn from_config(config: Self::Config) -> Result<(Self, String, HttpClientConfig), Error>;

    /// Where the settings keep the bearer token sent to the server.
    fn token(config: &mut Self::Config) -> &mut BearerToken;

    /// The `GET` request that opens the response for `target`.
    fn opening(&self, target: Target<'_>) -> Opening;

    /// The media type the response must have; another ends the subscription.
    fn content_type(&self) -> &'static str;

    /// A decoder for a fresh response.
    fn decoder(&self) -> Self::Decoder;

    /// Decodes a chunk; an error ends the subscription.
    fn decode(
        &self,
        decoder: &mut Self::Decoder,
        scope: Scope<'_>,
        chunk: &[u8],
    ) -> Result<Decoded, Error>;

    /// A response silent this long is taken for dead and reopened.
    fn idle_timeout(&self) -> Duration;

    /// Delays between reopening attempts that fail in a row.
    fn backoff(&self) -> &Backoff;
}

/// The client of a one-way push transport whose reading half is `R`. Cheap to clone; clones
/// share connections. `publish` and `fetch` use plain requests (the shared HTTP API); a
/// subscription reads the transport's response and reopens it from its cursor
/// ([`reopening`](crate::reopening)), so nothing is lost or repeated. Many topics, prefixes
/// included, follow on one response ([`Subscribe::subscribe_many`], what
/// [`follow`](pushpull_core::follow) uses), resumed with one cursor set.
#[derive(Clone, Debug)]
pub struct PushClient<R> {
    http: HttpClient,
    reader: R,
}

impl<R: PushReader> PushClient<R> {
    /// A client for the server the settings name.
    pub fn new(config: R::Config) -> Result<Self, Error> {
        let (reader, url, http_config) = R::from_config(config)?;
        let http = HttpClient::new(&url, R::NAME, http_config)?;
        Ok(Self { http, reader })
    }
}

#[async_trait]
impl<R: PushReader> Publish for PushClient<R> {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.http.publish(topic, publication).await
    }

    async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        self.http.publish_many(publications).await
    }
}

#[async_trait]
impl<R: PushReader> Fetch for PushClient<R> {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        crate::fetch_page(&self.http, topic, cursor, limit).await
    }

    async fn fetch_newest_first(
        &self,
        topic: &Topic,
        before: Cursor,
        limit: usize,
    ) -> Result<Page, Error> {
        crate::fetch_newest_first_page(&self.http, topic, before, limit).await
    }
}

#[async_trait]
impl<R: PushReader> Subscribe for PushClient<R> {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        crate::reopening(self.clone(), topic.clone(), cursor)
            .await
            .map_err(|e| e.with_transport(R::NAME))
    }

    async fn subscribe_many(
        &self,
        request: &FollowRequest,
    ) -> Result<Option<MultiSubscription>, Error> {
        crate::reopen::reopening_many(self.clone(), request)
            .await
            .map(Some)
            .map_err(|e| e.with_transport(R::NAME))
    }
}

impl<R: PushReader> Client for PushClient<R> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(R::NAME).with_push(true)
    }

    fn presence(&self) -> Option<&dyn pushpull_core::Presence> {
        Some(&self.http)
    }
}

/// What the reopening reader drives.
impl<R: PushReader> PushClient<R> {
    /// Opens the response for `target` and checks its status and media type. A retryable
    /// error (a refused connection, 5xx, 429, 408) is for the caller to retry; the rest end the
    /// subscription.
    pub(crate) async fn open(&self, target: Target<'_>) -> Result<Incoming, Error> {
        let http = &self.http;
        let opening = self.reader.opening(target);
        let request = || {
            let mut request = http.request(Method::GET, &opening.path);
            for (name, value) in &opening.headers {
                request = request.header(name, value);
            }
            request.body(Full::new(Bytes::new())).map_err(|e| {
                http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
            })
        };
        // Safe to repeat: a pooled connection that died with the network is retried at once.
        let response = http.send_idempotent(request, http.config().request_timeout).await?;
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
            _ => return Err(http.error_for(response).await),
        }
        let expected = self.reader.content_type();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.trim_start().starts_with(expected) {
            return Err(http
                .error(
                    ErrorKind::Protocol,
                    format!("expected {expected}, got content type {content_type:?}"),
                )
                .with_retryable(false));
        }
        Ok(response.into_body())
    }

    pub(crate) fn decoder(&self) -> R::Decoder {
        self.reader.decoder()
    }

    pub(crate) fn decode(
        &self,
        decoder: &mut R::Decoder,
        scope: Scope<'_>,
        chunk: &[u8],
    ) -> Result<Decoded, Error> {
        self.reader.decode(decoder, scope, chunk)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.reader.idle_timeout()
    }

    pub(crate) fn backoff(&self) -> &Backoff {
        self.reader.backoff()
    }
}

impl<R: PushReader> Connect for PushClient<R> {
    const NAME: &'static str = R::NAME;
    type Config = R::Config;

    fn connect(config: R::Config) -> Result<Arc<dyn Client>, Error> {
        Ok(Arc::new(Self::new(config)?))
    }

    fn set_token(config: &mut R::Config, token: BearerToken) -> Result<(), Error> {
        *R::token(config) = token;
        Ok(())
    }
}
