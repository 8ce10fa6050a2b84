//! The client half: Publish, Fetch and Subscribe over request lines, resuming by itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pushpull_core::{
    Backoff, Capabilities, Client, Connect, Continuity, Cursor, Delivery, Error, ErrorKind, Fetch,
    Page, Position, Publication, Publish, Receipt, Subscribe, Subscription, Topic,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;

use crate::NAME;
use crate::wire::{self, Answer, Request};

/// The line transport's client settings: the `[line]` section of a client configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineConfig {
    /// The server: `tcp://HOST:PORT` (or `HOST:PORT`).
    pub url: String,
    /// How long one request may take.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// Delays between reconnection attempts that fail in a row.
    pub backoff: Backoff,
}

impl Default for LineConfig {
    fn default() -> Self {
        Self {
            url: "tcp://127.0.0.1:7071".into(),
            request_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }
}

/// A client of a [`LineServer`](crate::LineServer). Cheap to clone.
#[derive(Clone, Debug)]
pub struct LineClient {
    addr: String,
    config: Arc<LineConfig>,
}

impl LineClient {
    /// A client of the server at `config.url`.
    pub fn new(config: LineConfig) -> Result<Self, Error> {
        let addr = config.url.strip_prefix("tcp://").unwrap_or(&config.url).to_owned();
        if !addr.contains(':') {
            return Err(Error::new(
                ErrorKind::Config,
                format!("line.url {:?} must be tcp://HOST:PORT", config.url),
            ));
        }
        Ok(Self { addr, config: Arc::new(config) })
    }

    fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::new(kind, message).with_transport(NAME)
    }

    /// Opens a connection and sends `request`; the answer lines follow.
    async fn open(&self, request: &Request) -> Result<Lines<BufReader<TcpStream>>, Error> {
        let timeout = self.config.request_timeout;
        let connect = tokio::time::timeout(timeout, TcpStream::connect(&self.addr)).await;
        let stream = match connect {
            Err(_) => return Err(Self::error(ErrorKind::Timeout, "no connection in time")),
            Ok(Err(e)) => {
                return Err(Self::error(ErrorKind::Connect, format!("{}: {e}", self.addr)));
            }
            Ok(Ok(stream)) => stream,
        };
        let mut stream = stream;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&wire::line(request))
            .await
            .map_err(|e| Self::error(ErrorKind::Connect, format!("sending: {e}")))?;
        // The connection stays whole (not split): closing our side is how the server learns a
        // subscription was dropped.
        Ok(BufReader::new(stream).lines())
    }

    /// The next answer line, within the request timeout (`None`: no time limit).
    async fn next(
        lines: &mut Lines<BufReader<TcpStream>>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Error> {
        let reading = lines.next_line();
        let line = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, reading)
                .await
                .map_err(|_| Self::error(ErrorKind::Timeout, "no answer in time"))?,
            None => reading.await,
        };
        match line {
            Ok(Some(line)) => match wire::answer(&line)? {
                Answer::Error { kind, message, retryable } => {
                    Err(wire::error_of(&kind, message, retryable))
                }
                answer => Ok(answer),
            },
            Ok(None) => Err(Self::error(ErrorKind::Connect, "the server closed the connection")),
            Err(e) => Err(Self::error(ErrorKind::Connect, format!("reading: {e}"))),
        }
    }

    /// One request and its answer, sent again after a failure a retry can fix.
    async fn request(&self, request: &Request) -> Result<Answer, Error> {
        let mut attempt = 0;
        loop {
            let result = match self.open(request).await {
                Ok(mut lines) => Self::next(&mut lines, Some(self.config.request_timeout)).await,
                Err(error) => Err(error),
            };
            match result {
                Err(error) if error.is_retryable() && attempt < 3 => {
                    tokio::time::sleep(self.config.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Opens the subscription's connection; the cursor it starts after.
    async fn subscribe_at(
        &self,
        topic: &Topic,
        after: Cursor,
    ) -> Result<(Lines<BufReader<TcpStream>>, Cursor), Error> {
        let request = Request::Subscribe { topic: topic.to_string(), after };
        let mut lines = self.open(&request).await?;
        match Self::next(&mut lines, Some(self.config.request_timeout)).await? {
            Answer::Subscribed(cursor) => Ok((lines, cursor)),
            other => {
                Err(Self::error(ErrorKind::Protocol, format!("expected subscribed, got {other:?}")))
            }
        }
    }
}

#[async_trait]
impl Publish for LineClient {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        // A key makes the retry of a publish whose answer was lost safe (P5).
        let key = publication.key().map_or_else(
            || format!("{}-{}", pushpull_core::Epoch::random(), pushpull_core::Epoch::random()),
            str::to_owned,
        );
        let request = Request::Publish {
            topic: topic.to_string(),
            payload: wire::encode_payload(publication.payload()),
            event: publication.event_type().map(str::to_owned),
            content_type: publication.media_type().map(str::to_owned),
            key: Some(key),
        };
        match self.request(&request).await? {
            Answer::Receipt(receipt) => receipt.into_receipt(),
            other => {
                Err(Self::error(ErrorKind::Protocol, format!("expected a receipt, got {other:?}")))
            }
        }
    }
}

#[async_trait]
impl Fetch for LineClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        if limit == 0 {
            return Err(Error::bad_request("limit must be at least 1").with_transport(NAME));
        }
        let request = Request::Fetch { topic: topic.to_string(), after: cursor, limit };
        match self.request(&request).await? {
            Answer::Page { gap, messages, next } => Ok(Page {
                gap: gap.map(wire::WireGap::into_gap).transpose()?,
                messages: messages
                    .into_iter()
                    .map(wire::WireMessage::into_message)
                    .collect::<Result<_, _>>()?,
                next,
            }),
            other => {
                Err(Self::error(ErrorKind::Protocol, format!("expected a page, got {other:?}")))
            }
        }
    }
}

#[async_trait]
impl Subscribe for LineClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let (lines, start) = self.subscribe_at(topic, cursor).await?;
        let follower = Follower {
            client: self.clone(),
            topic: topic.clone(),
            position: Position::new(start),
            lines: Some(lines),
            ready: VecDeque::new(),
            failures: 0,
            done: false,
        };
        Ok(Subscription::new(
            topic.clone(),
            start,
            futures::stream::unfold(follower, Follower::next),
        ))
    }
}

/// One subscription: its connection, reopened from its position when it breaks.
struct Follower {
    client: LineClient,
    topic: Topic,
    position: Position,
    lines: Option<Lines<BufReader<TcpStream>>>,
    ready: VecDeque<Delivery>,
    failures: u32,
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Delivery, Error>, Self)> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Some((Ok(delivery), self));
            }
            if self.done {
                return None;
            }
            let Some(lines) = self.lines.as_mut() else {
                tokio::time::sleep(self.client.config.backoff.delay(self.failures)).await;
                match self.client.subscribe_at(&self.topic, self.position.cursor()).await {
                    Ok((lines, _)) => self.lines = Some(lines),
                    Err(error) if error.is_retryable() => self.failures += 1,
                    Err(error) => {
                        self.done = true;
                        return Some((Err(error), self));
                    }
                }
                continue;
            };
            let delivery = match LineClient::next(lines, None).await {
                Ok(Answer::Message(message)) => message.into_message().map(Delivery::Message),
                Ok(Answer::Gap(gap)) => gap.into_gap().map(Delivery::Gap),
                Ok(other) => {
                    Err(LineClient::error(ErrorKind::Protocol, format!("unexpected {other:?}")))
                }
                Err(error) => Err(error),
            };
            match delivery {
                Ok(delivery) => {
                    self.failures = 0;
                    match self.position.check(&delivery) {
                        Continuity::Next => {
                            self.position.advance(&delivery);
                            self.ready.push_back(delivery);
                        }
                        Continuity::Repeat => {}
                        Continuity::Skip => self.lines = None,
                    }
                }
                // The connection broke: reopen from where we stand.
                Err(error) if error.is_retryable() => self.lines = None,
                Err(error) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
            }
        }
    }
}

impl Client for LineClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
    }
}

impl Connect for LineClient {
    const NAME: &'static str = NAME;
    type Config = LineConfig;

    fn connect(config: LineConfig) -> Result<Arc<dyn Client>, Error> {
        Ok(Arc::new(LineClient::new(config)?))
    }
}
