//! The client half: one socket, many subscriptions and requests, reconnecting by itself.
//!
//! This module is the application's side ([`WsClient`]); `driver` owns the socket (connecting,
//! reconnecting, routing frames) and `flow` decides what reaches each subscription (continuity,
//! pausing a subscription nobody reads).

mod driver;
mod flow;

use driver::Driver;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use pushpull_core::{
    Capabilities, Cursor, CursorSet, Delivery, Epoch, Error, ErrorKind, Fetch, FollowRequest,
    MultiSubscription, Page, Position, Publication, Publish, Receipt, Selector, Subscribe,
    Subscription, Topic,
};
use pushpull_http::ManyQuery;
use pushpull_http::wire::PublicationJson;
use tokio::sync::{mpsc, oneshot};

use crate::NAME;
use crate::config::ClientConfig;
use crate::wire::{self, Frame, Reply, Request};

/// A client of a WebSocket server: publish, fetch and any number of subscriptions over one
/// socket. Cheap to clone; clones share the socket.
///
/// A background task owns the socket. When it drops, the task reconnects with backoff and
/// subscribes every topic again from the last cursor it delivered, dropping anything already
/// delivered, so subscriptions lose and repeat nothing. Requests in flight when the socket
/// drops fail with a retryable error inside the client, which sends them again: `fetch` is
/// safe to repeat, and `publish` carries an idempotency key, so a retried publish is stored once.
#[derive(Clone, Debug)]
pub struct WsClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    config: ClientConfig,
    next_id: AtomicU64,
}

enum Command {
    Request {
        id: String,
        frame: Frame,
        reply: oneshot::Sender<Result<Answer, Error>>,
    },
    Subscribe {
        /// The application's handle on the subscription, unique in this client.
        local: u64,
        selector: Selector,
        track: flow::Track,
        deliveries: mpsc::Sender<Result<Delivery, Error>>,
        reply: SubscribeReply,
    },
    Unsubscribe {
        local: u64,
    },
}

/// A subscription on the wire: its topic (or prefix), and the name (`sub`) that tells it from
/// another subscription to the same topic on this socket. The first one to a topic goes
/// unnamed.
type Key = (Selector, Option<String>);

/// Where the answer to an application's subscribe goes: where it starts (a cursor, or a
/// prefix's cursor set).
type SubscribeReply = oneshot::Sender<Result<String, Error>>;

/// A reply and the payload of its binary frame.
type Answer = (Reply, Option<bytes::Bytes>);

/// How many times a request is sent before its error is returned.
const ATTEMPTS: u32 = 4;

impl WsClient {
    /// A client for the server at `config.url`; it connects in the background.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let url = socket_url(&config.url)?;
        let tls = match url.starts_with("wss://") {
            true => Some(pushpull_http::tls::with_alpn(
                &pushpull_http::tls::client_config(config.ca_file.as_deref())
                    .map_err(|e| e.with_transport(NAME))?,
                &[b"http/1.1"],
            )),
            false => None,
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            url,
            tls,
            rejected: None,
            config: config.clone(),
            commands: receiver,
            pending: HashMap::new(),
            subscriptions: HashMap::new(),
            last_error: None,
            outbox: Vec::new(),
            counter: 0,
            held: None,
            refresh_at: None,
            refreshing: None,
        };
        tokio::spawn(driver.run());
        Ok(Self { shared: Arc::new(Shared { commands, config, next_id: AtomicU64::new(1) }) })
    }

    fn next_id(&self) -> String {
        format!("c{}", self.shared.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn closed() -> Error {
        Error::new(ErrorKind::Closed, "the client's connection task has stopped")
            .with_transport(NAME)
    }

    /// Sends a request and waits for its answer, again after a retryable failure.
    async fn request(&self, make: impl Fn(&str) -> Frame) -> Result<Answer, Error> {
        let mut attempt = 0;
        loop {
            let id = self.next_id();
            let (reply, answer) = oneshot::channel();
            let command = Command::Request { id: id.clone(), frame: make(&id), reply };
            self.shared.commands.send(command).map_err(|_| Self::closed())?;
            let timeout = self.shared.config.request_timeout;
            let result = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Self::closed()),
                Err(_) => {
                    Err(Error::new(ErrorKind::Timeout, format!("no answer within {timeout:?}"))
                        .with_transport(NAME))
                }
            };
            match result {
                Err(error) if error.is_retryable() && attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(self.shared.config.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Ok((Reply::Error { kind, message, .. }, _)) => {
                    let kind = ErrorKind::from_wire(&kind).unwrap_or(ErrorKind::Protocol);
                    return Err(Error::new(kind, message).with_transport(NAME));
                }
                other => return other,
            }
        }
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::new(ErrorKind::Protocol, format!("unexpected answer {reply:?}")).with_transport(NAME)
}

#[async_trait]
impl Publish for WsClient {
    async fn publish(&self, topic: &Topic, mut publication: Publication) -> Result<Receipt, Error> {
        if publication.key().is_none() {
            publication =
                publication.idempotency_key(format!("{}-{}", Epoch::random(), Epoch::random()));
        }
        publication.validate(usize::MAX).map_err(|e| e.with_transport(NAME))?;
        let (reply, _) = self.request(|id| wire::publish_frame(id, topic, &publication)).await?;
        match reply {
            Reply::Published { receipt, .. } => {
                let body = serde_json::to_vec(&receipt).expect("a receipt encodes");
                pushpull_http::wire::decode_receipt(&body).map_err(|e| e.with_transport(NAME))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes the batch with `publish_many` requests on the socket (at most
    /// [`MAX_BATCH`](pushpull_http::MAX_BATCH) publications, and 64 KiB of JSON, per request, or
    /// one larger publication alone): each publication's receipt or error, in order. Each gets an idempotency key
    /// when it has none, so a request retried after a dropped socket stores each once.
    async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        // Every server takes a message of 64 KiB beyond 4/3 of its broker's max_payload: a
        // request of several publications stays within the 64 KiB, one alone within the rest.
        const CHUNK_BYTES: usize = 64 * 1024;
        let mut items = Vec::with_capacity(publications.len());
        for (topic, mut publication) in publications {
            if publication.key().is_none() {
                publication =
                    publication.idempotency_key(format!("{}-{}", Epoch::random(), Epoch::random()));
            }
            let json = PublicationJson::from_publication(&topic, &publication);
            // Its size in the frame: past the server's message limit the socket closes.
            let size = serde_json::to_string(&json).map_or(0, |text| text.len());
            items.push((size, json));
        }
        let mut answers = Vec::with_capacity(items.len());
        let mut rest = &items[..];
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .take(pushpull_http::MAX_BATCH)
                .take_while(|(size, _)| {
                    bytes += size;
                    bytes <= CHUNK_BYTES
                })
                .count()
                .max(1);
            let (chunk, after) = rest.split_at(take);
            rest = after;
            let publications: Vec<PublicationJson> = chunk.iter().map(|(_, p)| p.clone()).collect();
            let request = |id: &str| {
                let request =
                    Request::PublishMany { id: id.into(), publications: publications.clone() };
                Frame::Text(serde_json::to_string(&request).expect("encodes"))
            };
            match self.request(request).await? {
                (Reply::PublishedMany { results, .. }, _) if results.len() == chunk.len() => {
                    answers.extend(results.into_iter().map(|result| {
                        result.into_result(|kind, message| {
                            Error::new(kind, message).with_transport(NAME)
                        })
                    }));
                }
                (other, _) => return Err(unexpected(&other)),
            }
        }
        Ok(answers)
    }
}

#[async_trait]
impl Fetch for WsClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        if limit == 0 {
            return Err(Error::bad_request("limit must be at least 1").with_transport(NAME));
        }
        let request = |id: &str| {
            let request = Request::Fetch {
                id: id.into(),
                topic: topic.to_string(),
                after: Some(cursor.to_string()),
                limit: Some(limit),
            };
            Frame::Text(serde_json::to_string(&request).expect("encodes"))
        };
        match self.request(request).await? {
            (Reply::Page { page, .. }, payloads) => {
                wire::page_of(page, payloads).map_err(|e| e.with_transport(NAME))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }
}

impl WsClient {
    /// Asks the socket who follows `topic`.
    async fn ask_presence(&self, topic: &Topic, stats: bool) -> Result<Reply, Error> {
        let request = |id: &str| {
            let request = Request::Presence { id: id.into(), topic: topic.to_string(), stats };
            Frame::Text(serde_json::to_string(&request).expect("encodes"))
        };
        Ok(self.request(request).await?.0)
    }
}

#[async_trait]
impl pushpull_core::Presence for WsClient {
    async fn snapshot(&self, topic: &Topic) -> Result<pushpull_core::PresenceSnapshot, Error> {
        match self.ask_presence(topic, false).await? {
            Reply::Presence { snapshot, .. } => Ok(snapshot),
            other => Err(unexpected(&other)),
        }
    }

    async fn stats(&self, topic: &Topic) -> Result<pushpull_core::PresenceStats, Error> {
        match self.ask_presence(topic, true).await? {
            Reply::PresenceStats { stats, .. } => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }
}

impl WsClient {
    /// Subscribes on the socket to `selector`, tracked by `track`; the start the server
    /// answered with, and the deliveries.
    async fn open(
        &self,
        selector: &Selector,
        track: impl Fn() -> flow::Track,
    ) -> Result<(String, Deliveries), Error> {
        let mut attempt = 0;
        loop {
            let (deliveries, receiver) =
                mpsc::channel(self.shared.config.subscription_buffer.max(1));
            let (reply, answer) = oneshot::channel();
            let local = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let command = Command::Subscribe {
                local,
                selector: selector.clone(),
                track: track(),
                deliveries,
                reply,
            };
            self.shared.commands.send(command).map_err(|_| Self::closed())?;
            let timeout = self.shared.config.request_timeout;
            let result =
                match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(Self::closed()),
                    Err(_) => Err(Error::new(ErrorKind::Timeout, "no answer to subscribe")
                        .with_transport(NAME)),
                };
            if result.is_err() {
                // The driver may still hold this attempt (a subscribe nobody answered): take
                // it back, so neither the driver nor the server keeps it.
                let _ = self.shared.commands.send(Command::Unsubscribe { local });
            }
            match result {
                Ok(start) => {
                    let stream = Deliveries {
                        receiver,
                        unsubscribe: Some((local, self.shared.commands.clone())),
                    };
                    return Ok((start, stream));
                }
                Err(error) if error.is_retryable() && attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(self.shared.config.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[async_trait]
impl Subscribe for WsClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let selector = Selector::Topic(topic.clone());
        let (start, stream) = self
            .open(&selector, || flow::Track::One {
                topic: topic.clone(),
                position: Position::new(cursor),
            })
            .await?;
        let start = start.parse().map_err(|e: Error| e.with_transport(NAME))?;
        Ok(Subscription::new(topic.clone(), start, stream))
    }

    /// Follows the request's topics and prefixes on the one socket: a prefix subscription per
    /// prefix (resumed by its own cursor set), a subscription per topic.
    async fn subscribe_many(
        &self,
        request: &FollowRequest,
    ) -> Result<Option<MultiSubscription>, Error> {
        if request.selectors.iter().all(|(s, _)| s.prefix().is_none()) {
            return Ok(None); // one subscription per topic, on the socket, is what follow does
        }
        let mut cursors = CursorSet::new();
        let mut streams = Vec::new();
        for (selector, start) in &request.selectors {
            match selector {
                Selector::Topic(topic) => {
                    let from = request.resume.as_ref().and_then(|set| set.get(topic));
                    let subscription = self.subscribe(topic, from.unwrap_or(*start)).await?;
                    cursors.set(topic.clone(), subscription.cursor());
                    streams.push(subscription.boxed());
                }
                Selector::Prefix(_) => {
                    let resume = request.resume.as_ref().map(|set| set.only(selector));
                    let one = FollowRequest {
                        selectors: vec![(selector.clone(), *start)],
                        resume,
                        max_topics: request.max_topics,
                    };
                    let (start, stream) =
                        self.open(selector, || flow::Track::Many(ManyQuery::new(&one))).await?;
                    let set = CursorSet::parse(&start, std::slice::from_ref(selector))
                        .map_err(|e| e.with_transport(NAME))?;
                    for (topic, cursor) in set.iter() {
                        cursors.set(topic.clone(), cursor);
                    }
                    streams.push(stream.boxed());
                }
            }
        }
        Ok(Some(MultiSubscription::new(cursors, futures::stream::select_all(streams))))
    }
}

impl pushpull_core::Client for WsClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
    }

    fn presence(&self) -> Option<&dyn pushpull_core::Presence> {
        Some(self)
    }
}

/// A subscription's deliveries; dropping it unsubscribes.
struct Deliveries {
    receiver: mpsc::Receiver<Result<Delivery, Error>>,
    unsubscribe: Option<(u64, mpsc::UnboundedSender<Command>)>,
}

impl futures::Stream for Deliveries {
    type Item = Result<Delivery, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some((local, commands)) = self.unsubscribe.take() {
            let _ = commands.send(Command::Unsubscribe { local });
        }
    }
}

/// `ws://host:port/prefix/v1/ws` from an `http://` or `ws://` base URL.
fn socket_url(base: &str) -> Result<String, Error> {
    let base = base.trim_end_matches('/');
    let (scheme, rest) = if let Some(rest) = base.strip_prefix("http://") {
        ("ws", rest)
    } else if let Some(rest) = base.strip_prefix("ws://") {
        ("ws", rest)
    } else if let Some(rest) = base.strip_prefix("https://") {
        ("wss", rest)
    } else if let Some(rest) = base.strip_prefix("wss://") {
        ("wss", rest)
    } else {
        return Err(Error::new(
            ErrorKind::Config,
            format!("url {base:?} must start with http://, https://, ws:// or wss://"),
        )
        .with_transport(NAME));
    };
    if rest.is_empty() {
        return Err(
            Error::new(ErrorKind::Config, format!("url {base:?} has no host")).with_transport(NAME)
        );
    }
    Ok(format!("{scheme}://{rest}/v1/ws"))
}

pushpull_core::connect_by_new!(WsClient, ClientConfig, crate::NAME);
