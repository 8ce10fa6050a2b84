//! The client half: one socket, many subscriptions and requests, reconnecting by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use pushpull_core::{
    Capabilities, Continuity, Cursor, Delivery, Epoch, Error, ErrorKind, Fetch, Page, Position,
    Publication, Publish, Receipt, Subscribe, Subscription, Topic,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::NAME;
use crate::config::ClientConfig;
use crate::wire::{self, Frame, Reply, Request, SUBPROTOCOL};

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
        topic: Topic,
        cursor: Cursor,
        deliveries: mpsc::Sender<Result<Delivery, Error>>,
        reply: oneshot::Sender<Result<Cursor, Error>>,
    },
    Unsubscribe {
        local: u64,
    },
}

/// A subscription on the wire: its topic, and the name (`sub`) that tells it from another
/// subscription to the same topic on this socket. The first one to a topic goes unnamed.
type Key = (Topic, Option<String>);

/// Where the answer to an application's subscribe goes.
type SubscribeReply = oneshot::Sender<Result<Cursor, Error>>;

/// A reply and the payload of its binary frame.
type Answer = (Reply, Option<bytes::Bytes>);

/// How many times a request is sent before its error is returned.
const ATTEMPTS: u32 = 4;

impl WsClient {
    /// A client for the server at `config.url`; it connects in the background.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let url = socket_url(&config.url)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            url,
            config: config.clone(),
            commands: receiver,
            pending: HashMap::new(),
            subscriptions: HashMap::new(),
            last_error: None,
            outbox: Vec::new(),
            counter: 0,
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

#[async_trait]
impl Subscribe for WsClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let mut attempt = 0;
        loop {
            let (deliveries, receiver) =
                mpsc::channel(self.shared.config.subscription_buffer.max(1));
            let (reply, answer) = oneshot::channel();
            let local = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let command =
                Command::Subscribe { local, topic: topic.clone(), cursor, deliveries, reply };
            self.shared.commands.send(command).map_err(|_| Self::closed())?;
            let timeout = self.shared.config.request_timeout;
            let result =
                match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(Self::closed()),
                    Err(_) => Err(Error::new(ErrorKind::Timeout, "no answer to subscribe")
                        .with_transport(NAME)),
                };
            match result {
                Ok(start) => {
                    let stream = Deliveries {
                        receiver,
                        unsubscribe: Some((local, self.shared.commands.clone())),
                    };
                    return Ok(Subscription::new(topic.clone(), start, stream));
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

impl pushpull_core::Client for WsClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
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

/// The error for an HTTP answer to the upgrade: retryable when the status says a retry can
/// help (a 503 during a deploy), with its `Retry-After`; final otherwise (404: no WebSocket
/// there).
fn refusal(url: &str, response: &http::Response<Option<Vec<u8>>>) -> Error {
    let status = response.status();
    let mut error = Error::new(
        if pushpull_http::status_is_retryable(status) {
            ErrorKind::Connect
        } else {
            ErrorKind::Protocol
        },
        format!("{url} refused the WebSocket handshake with {status}"),
    )
    .with_retryable(pushpull_http::status_is_retryable(status))
    .with_transport(NAME);
    if let Some(delay) = pushpull_http::retry_after(response) {
        error = error.with_retry_after(delay);
    }
    error
}

/// `ws://host:port/prefix/v1/ws` from an `http://` or `ws://` base URL.
fn socket_url(base: &str) -> Result<String, Error> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(rest) = base.strip_prefix("http://") {
        rest
    } else if let Some(rest) = base.strip_prefix("ws://") {
        rest
    } else if base.starts_with("https://") || base.starts_with("wss://") {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("url {base:?}: TLS is not supported yet; put a TLS proxy in front or use http"),
        )
        .with_transport(NAME));
    } else {
        return Err(Error::new(
            ErrorKind::Config,
            format!("url {base:?} must start with http:// or ws://"),
        )
        .with_transport(NAME));
    };
    if rest.is_empty() {
        return Err(
            Error::new(ErrorKind::Config, format!("url {base:?} has no host")).with_transport(NAME)
        );
    }
    Ok(format!("ws://{rest}/v1/ws"))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the driver keeps of each subscription across sockets.
struct Follow {
    /// The application's handle, to find the subscription when it is dropped.
    local: u64,
    deliveries: mpsc::Sender<Result<Delivery, Error>>,
    /// Where to resume: after the last delivery handed to the application.
    position: Position,
    /// The subscribe request in flight, if any, and the application's reply. Until it is
    /// answered, the subscription's frames are dropped: they can only be an earlier
    /// subscription's, still on the way (the server answers a subscribe before its first push).
    waiting: Option<(String, Option<SubscribeReply>)>,
    /// The application fell behind and the subscription is cancelled at the server until it
    /// has read half its buffer; the server's log holds what comes meanwhile.
    paused: bool,
}

/// The task that owns the socket.
struct Driver {
    url: String,
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: HashMap<String, oneshot::Sender<Result<Answer, Error>>>,
    subscriptions: HashMap<Key, Follow>,
    last_error: Option<Error>,
    /// Frames the driver decided to send while handling something else.
    outbox: Vec<Frame>,
    /// Numbers the driver's own request ids and subscription names.
    counter: u64,
}

enum Step {
    Continue,
    Reconnect,
    Stop,
}

fn text(request: &Request) -> Frame {
    Frame::Text(serde_json::to_string(request).expect("requests encode"))
}

impl Driver {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.connect().await {
                Ok(socket) => {
                    failures = 0;
                    match self.serve(socket).await {
                        Step::Stop => return,
                        _ => self.fail_pending(),
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "websocket connect failed");
                    let backoff = self.config.backoff.delay(failures);
                    let delay = error.retry_after().map_or(backoff, |asked| asked.max(backoff));
                    if !error.is_retryable() {
                        // A retry cannot change it (the server has no WebSocket, or refuses
                        // us): every subscription ends with the reason.
                        self.end_all(&error).await;
                    }
                    self.last_error = Some(error);
                    failures = failures.saturating_add(1);
                    if !self.idle_through(delay).await {
                        return;
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Socket, Error> {
        let mut request = self.url.as_str().into_client_request().map_err(|e| {
            Error::new(ErrorKind::Config, format!("bad url {}: {e}", self.url)).with_transport(NAME)
        })?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", http::HeaderValue::from_static(SUBPROTOCOL));
        let config = WebSocketConfig::default().max_write_buffer_size(64 * 1024 * 1024);
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match tokio::time::timeout(self.config.request_timeout, connecting).await {
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("no handshake with {} in time", self.url),
            )
            .with_transport(NAME)),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                Err(refusal(&self.url, &response))
            }
            Ok(Err(error)) => {
                Err(Error::new(ErrorKind::Connect, format!("cannot open {}: {error}", self.url))
                    .with_transport(NAME))
            }
        }
    }

    /// While disconnected: answer commands with the last connection error until `delay` passes.
    /// False when every handle on the client is gone.
    async fn idle_through(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(command) => self.refuse(command),
                },
            }
        }
    }

    fn connection_error(&self) -> Error {
        self.last_error.as_ref().map_or_else(
            || Error::new(ErrorKind::Connect, "not connected").with_transport(NAME),
            |e| {
                Error::new(e.kind(), e.message())
                    .with_retryable(e.is_retryable())
                    .with_transport(NAME)
            },
        )
    }

    fn refuse(&mut self, command: Command) {
        let error = self.connection_error();
        match command {
            Command::Request { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Subscribe { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Unsubscribe { local } => {
                self.subscriptions.retain(|_, follow| follow.local != local);
            }
        }
    }

    /// Ends every subscription with `error`: its pending subscribe, or its stream.
    async fn end_all(&mut self, error: &Error) {
        let keys: Vec<Key> = self.subscriptions.keys().cloned().collect();
        for key in keys {
            let error = Error::new(error.kind(), error.message()).with_retryable(false);
            self.end(&key, error.with_transport(NAME)).await;
        }
    }

    fn fail_pending(&mut self) {
        for (_, reply) in self.pending.drain() {
            let error = Error::new(ErrorKind::Connect, "the socket dropped before the answer")
                .with_transport(NAME);
            let _ = reply.send(Err(error));
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// Queues a subscribe for `key` from where it stands; its frames are dropped until the
    /// answer comes.
    fn subscribe_again(&mut self, key: &Key, prefix: &str) {
        let id = self.next_id(prefix);
        let Some(follow) = self.subscriptions.get_mut(key) else { return };
        let reply = follow.waiting.take().and_then(|(_, reply)| reply);
        follow.waiting = Some((id.clone(), reply));
        follow.paused = false;
        let request = Request::Subscribe {
            id,
            topic: key.0.to_string(),
            after: Some(follow.position.cursor().to_string()),
            sub: key.1.clone(),
        };
        self.outbox.push(text(&request));
    }

    /// Runs one socket until it drops (`Reconnect`) or the client is gone (`Stop`).
    async fn serve(&mut self, mut socket: Socket) -> Step {
        // Subscribe everything again, from where each one stands.
        let keys: Vec<Key> = self.subscriptions.keys().cloned().collect();
        for key in &keys {
            self.subscribe_again(key, "resubscribe-");
        }
        let mut ticks = tokio::time::interval_at(
            Instant::now() + self.config.ping_interval,
            self.config.ping_interval,
        );
        let mut heard = Instant::now();
        let mut catch_up = tokio::time::interval(Duration::from_millis(20));
        let mut step = Step::Continue;
        loop {
            for frame in std::mem::take(&mut self.outbox) {
                if send(&mut socket, frame).await.is_err() {
                    return Step::Reconnect;
                }
            }
            match step {
                Step::Continue => {}
                other => return other,
            }
            let paused = self.subscriptions.values().any(|f| f.paused);
            step = tokio::select! {
                _ = catch_up.tick(), if paused => {
                    self.resume_caught_up();
                    Step::Continue
                }
                command = self.commands.recv() => match command {
                    None => {
                        let _ = socket.close(None).await;
                        return Step::Stop;
                    }
                    Some(command) => self.command(&mut socket, command).await,
                },
                frame = socket.next() => match frame {
                    Some(Ok(message)) => {
                        heard = Instant::now();
                        self.frame(message).await
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "websocket broke; reconnecting");
                        Step::Reconnect
                    }
                    None => Step::Reconnect,
                },
                _ = ticks.tick() => {
                    if heard.elapsed() > self.config.idle_timeout {
                        tracing::debug!("server silent past the idle timeout; reconnecting");
                        Step::Reconnect
                    } else if socket.send(WsMessage::Ping(bytes::Bytes::new())).await.is_err() {
                        Step::Reconnect
                    } else {
                        Step::Continue
                    }
                }
            };
        }
    }

    async fn command(&mut self, socket: &mut Socket, command: Command) -> Step {
        match command {
            Command::Request { id, frame, reply } => {
                self.pending.insert(id, reply);
                if send(socket, frame).await.is_err() {
                    return Step::Reconnect;
                }
            }
            Command::Subscribe { local, topic, cursor, deliveries, reply } => {
                // The first subscription to a topic goes unnamed; more get a name each.
                let key = match self.subscriptions.contains_key(&(topic.clone(), None)) {
                    false => (topic, None),
                    true => {
                        let sub = self.next_id("s");
                        (topic, Some(sub))
                    }
                };
                let follow = Follow {
                    local,
                    deliveries,
                    position: Position::new(cursor),
                    waiting: Some((String::new(), Some(reply))),
                    paused: false,
                };
                self.subscriptions.insert(key.clone(), follow);
                self.subscribe_again(&key, "c");
            }
            Command::Unsubscribe { local } => {
                let key = self.subscriptions.iter().find(|(_, f)| f.local == local);
                if let Some(key) = key.map(|(key, _)| key.clone()) {
                    self.subscriptions.remove(&key);
                    let id = self.next_id("u");
                    let (topic, sub) = key;
                    self.outbox.push(text(&Request::Unsubscribe {
                        id,
                        topic: topic.to_string(),
                        sub,
                    }));
                }
            }
        }
        Step::Continue
    }

    async fn frame(&mut self, message: WsMessage) -> Step {
        let frame = match message {
            WsMessage::Text(text) => Frame::Text(text.as_str().to_owned()),
            WsMessage::Binary(bytes) => Frame::Binary(bytes),
            WsMessage::Close(frame) => {
                tracing::debug!(?frame, "the server closed the socket");
                return Step::Reconnect;
            }
            _ => return Step::Continue,
        };
        let (reply, payload) = match wire::parse_reply(frame) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(%error, "unreadable frame from the server; reconnecting");
                return Step::Reconnect;
            }
        };
        let answers = match &reply {
            Reply::Published { id, .. } | Reply::Page { id, .. } => Some(id.clone()),
            _ => None,
        };
        if let Some(id) = answers {
            if let Some(waiter) = self.pending.remove(&id) {
                let _ = waiter.send(Ok((reply, payload)));
            }
            return Step::Continue;
        }
        match reply {
            Reply::Message(pushed) => {
                let key = (pushed.item.topic.clone(), pushed.sub);
                match wire::message_of(pushed.item, payload) {
                    Ok(message) => self.deliver(&key, Delivery::Message(message)),
                    Err(error) => self.end(&key, error.with_transport(NAME)).await,
                }
            }
            Reply::Gap(pushed) => {
                let key = (pushed.item.topic.clone(), pushed.sub);
                match wire::gap_of(pushed.item) {
                    Ok(gap) => self.deliver(&key, Delivery::Gap(gap)),
                    Err(error) => self.end(&key, error.with_transport(NAME)).await,
                }
            }
            Reply::Subscribed { id, topic, sub, cursor } => {
                if let Some(follow) = self.subscriptions.get_mut(&(topic, sub)) {
                    if follow.waiting.as_ref().is_some_and(|(waiting, _)| *waiting == id) {
                        if let Some((_, reply)) = follow.waiting.take() {
                            if !matches!(follow.position.cursor(), Cursor::After(..)) {
                                follow.position.reset(cursor);
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(cursor));
                            }
                        }
                    }
                }
            }
            Reply::Unsubscribed { topic, sub, reason: Some(reason), .. } => {
                let error = Error::new(
                    ErrorKind::Backend,
                    format!("the server ended the subscription: {reason}"),
                );
                self.end(&(topic, sub), error.with_transport(NAME)).await;
            }
            Reply::Unsubscribed { .. } => {}
            Reply::Error { id, topic, sub, kind, message } => {
                let subscribe = self.subscriptions.iter().find_map(|(key, f)| {
                    f.waiting.as_ref().filter(|(w, _)| Some(w) == id.as_ref()).map(|_| key.clone())
                });
                let error =
                    Error::new(ErrorKind::from_wire(&kind).unwrap_or(ErrorKind::Protocol), message)
                        .with_transport(NAME);
                if let Some(key) = subscribe.or(topic.map(|topic| (topic, sub))) {
                    // A subscribe refused (or a subscription ended) by the server.
                    self.end(&key, error).await;
                } else if let Some(reply) = id.and_then(|id| self.pending.remove(&id)) {
                    let reply_error = Reply::Error {
                        id: None,
                        topic: None,
                        sub: None,
                        kind,
                        message: error.message().into(),
                    };
                    let _ = reply.send(Ok((reply_error, None)));
                }
            }
            Reply::Published { .. } | Reply::Page { .. } => {}
        }
        Step::Continue
    }

    /// Hands a delivery to its subscription if it continues from where that stands: a repeat
    /// is dropped, and one that skips ahead makes the subscription start again from its cursor.
    fn deliver(&mut self, key: &Key, delivery: Delivery) {
        let Some(follow) = self.subscriptions.get_mut(key) else { return };
        if follow.paused || follow.waiting.is_some() {
            // An earlier subscription's frame, sent before the server took in the pause or
            // resubscribe: what it carries comes again after the answer.
            return;
        }
        match follow.position.check(&delivery) {
            Continuity::Repeat => return,
            Continuity::Skip => {
                tracing::warn!(
                    topic = %key.0,
                    cursor = %follow.position.cursor(),
                    got = %delivery.cursor(),
                    "a delivery skipped ahead of the subscription; subscribing again from its cursor"
                );
                self.outbox.push(text(&Request::Unsubscribe {
                    id: "resync".into(),
                    topic: key.0.to_string(),
                    sub: key.1.clone(),
                }));
                self.subscribe_again(key, "resync-");
                return;
            }
            Continuity::Next => {}
        }
        let cursor = delivery.clone();
        match follow.deliveries.try_send(Ok(delivery)) {
            Ok(()) => follow.position.advance(&cursor),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Never block the socket on one slow reader: pause this subscription at the
                // server and take it up again from its cursor once the application caught up.
                follow.paused = true;
                self.outbox.push(text(&Request::Unsubscribe {
                    id: "pause".into(),
                    topic: key.0.to_string(),
                    sub: key.1.clone(),
                }));
            }
            // The application dropped the subscription; the unsubscribe command follows.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Subscribes again, from their cursors, the paused subscriptions whose application has
    /// read at least half of its buffer.
    fn resume_caught_up(&mut self) {
        let ready: Vec<Key> = self
            .subscriptions
            .iter()
            .filter(|(_, f)| f.paused && f.deliveries.capacity() * 2 >= f.deliveries.max_capacity())
            .map(|(key, _)| key.clone())
            .collect();
        for key in &ready {
            self.subscribe_again(key, "resume-");
        }
    }

    async fn end(&mut self, key: &Key, error: Error) {
        if let Some(mut follow) = self.subscriptions.remove(key) {
            match follow.waiting.take() {
                Some((_, Some(reply))) => {
                    let _ = reply.send(Err(error));
                }
                _ => {
                    let _ = follow.deliveries.send(Err(error)).await;
                }
            }
        }
    }
}

async fn send(socket: &mut Socket, frame: Frame) -> Result<(), ()> {
    let message = match frame {
        Frame::Text(text) => WsMessage::Text(text.into()),
        Frame::Binary(bytes) => WsMessage::Binary(bytes),
    };
    socket.send(message).await.map_err(|_| ())
}

impl pushpull_core::Connect for WsClient {
    const NAME: &'static str = crate::NAME;
    type Config = ClientConfig;

    fn connect(config: ClientConfig) -> Result<std::sync::Arc<dyn pushpull_core::Client>, Error> {
        Ok(std::sync::Arc::new(WsClient::new(config)?))
    }
}
