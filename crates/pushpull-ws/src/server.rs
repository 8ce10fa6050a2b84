//! The server half: the upgrade on `GET /v1/ws`, and one session per socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::borrow::Cow;

use pushpull_core::{
    Broker, Cursor, CursorSet, Delivery, EncodingKey, Error, FollowRequest, Selector, SetKeys,
    SubscriptionSet, Topic,
};
use pushpull_http::{
    Context, Gauge, Grant, HandlerResult, HttpRequest, LiveCount, Measure, Mount, Params, Right,
    Route, Router, Shutdown,
};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::close;
use crate::config::ServerConfig;
use crate::deflate::{self, Inflating};
use crate::wire::{self, Frame, Incoming, Reply, Request, SUBPROTOCOL};
use pushpull_http::fanout::{Encoder, FanOut, Gate, GatedIo, Seat};
use pushpull_http::metrics::{self, DeliveryMeter};
use tracing::Instrument;

/// The route of the socket.
pub const WS_PATH: &str = "/v1/ws";

/// The WebSocket server over a broker: a cheap-`Clone` tower (and hyper) service serving
/// publishing, pages and the socket on `GET /v1/ws`; its [`routes`](Self::routes) mount the
/// upgrade beside other transports' on the same server.
#[derive(Clone, Debug)]
pub struct WsServer {
    sockets: Sockets,
    router: Router,
}

impl WsServer {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        let mut pages = pushpull_http::PageConfig::default();
        pages.max_limit = config.max_limit;
        Self::within(&Context::new(broker).with_pages(pages, crate::NAME), config)
    }

    /// A server within `context`: its page route, and the origins it trusts besides its own
    /// `allowed_origins`.
    fn within(context: &Context, mut config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let broker = context.broker.clone();
        config.allowed_origins.extend(context.allowed_origins.iter().cloned());
        let api = pushpull_http::api(context, None);
        let origins = Arc::new(pushpull_http::Cors::new(config.allowed_origins.iter().cloned()));
        let message_limit = config.message_limit(broker.capabilities().max_payload);
        let meter = DeliveryMeter::new(crate::NAME);
        let fanout = config.fanout.then(|| FanOut::new(broker.clone(), meter.clone()));
        let min_bytes = config.deflate_min_bytes;
        let encoders = [
            Arc::new(|delivery: &Delivery| fanned(delivery, None)) as Encoder,
            Arc::new(move |delivery: &Delivery| fanned(delivery, Some(min_bytes))) as Encoder,
        ];
        let sockets = Sockets {
            broker,
            fanout,
            encoders,
            message_limit,
            config: Arc::new(config),
            origins,
            open: Gauge::new(),
            subscribed: Gauge::new(),
            meter,
            max_topics: context.max_topics,
            presences: context.presences(),
        };
        let router = api.with(sockets.routes());
        Ok(Self { sockets, router })
    }

    /// Sockets open right now.
    pub fn open_sockets(&self) -> usize {
        self.sockets.open.get()
    }

    /// The fan-outs of its topics (`None` with `fanout` off): what they wrote, and how many
    /// sockets they let go.
    pub fn fanout(&self) -> Option<&FanOut> {
        self.sockets.fanout.as_deref()
    }

    /// The upgrade route, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        self.sockets.routes()
    }

    /// The router it serves: publishing, pages and the socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(WsServer);

impl pushpull_http::TransportServer for WsServer {
    const NAME: &'static str = crate::NAME;
    type Config = ServerConfig;

    fn check(config: &ServerConfig) -> Result<(), Error> {
        config.validate()
    }

    fn build(context: &Context, config: ServerConfig) -> Result<Self, Error> {
        Self::within(context, config)
    }

    fn mount(&self) -> Mount {
        let open = self.sockets.open.clone();
        let subscribed = self.sockets.subscribed.clone();
        Mount::routes(self.routes())
            .with_live(LiveCount::new("open_sockets", &[Measure::Connections], move || open.get()))
            .with_live(LiveCount::new("subscriptions", &[Measure::Subscriptions], move || {
                subscribed.get()
            }))
    }
}

/// What the upgrade route and the sessions need; the routes hold this, not the [`WsServer`]
/// (whose router holds the routes).
#[derive(Clone)]
struct Sockets {
    broker: Arc<dyn Broker>,
    /// The fan-outs of topics, unless `config.fanout` is off.
    fanout: Option<Arc<FanOut>>,
    /// What a fan-out writes to a socket that did not agree to compression, and to one that
    /// did.
    encoders: [Encoder; 2],
    config: Arc<ServerConfig>,
    /// The largest message a socket may send: `config`'s, bounded by the broker's payload
    /// limit.
    message_limit: usize,
    /// `config.allowed_origins`, ready to match.
    origins: Arc<pushpull_http::Cors>,
    open: Gauge,
    /// Subscriptions on every socket.
    subscribed: Gauge,
    meter: DeliveryMeter,
    /// The most topics one prefix subscription follows (`http.max_topics_per_connection`).
    max_topics: usize,
    /// Where subscriptions become members of their topics' presence.
    presences: pushpull_http::Presences,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets").field("config", &self.config).field("open", &self.open).finish()
    }
}

impl Sockets {
    fn routes(&self) -> Vec<Route> {
        // Shared by every session: a session holds a pointer to it, not a copy.
        let sockets = Arc::new(self.clone());
        vec![Route::new(Method::GET, WS_PATH, move |req: HttpRequest, _: Params| {
            std::future::ready(sockets.upgrade(req))
        })]
    }

    fn upgrade(self: &Arc<Self>, mut req: HttpRequest) -> HandlerResult {
        check_origin(req.headers(), &self.origins)?;
        let key = check_handshake(req.headers())?;
        let subprotocol = offers(req.headers(), header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
        let on_upgrade = hyper::upgrade::on(&mut req);
        // The socket keeps its connection counted as open (health's open_connections).
        let hold = pushpull_http::ConnectionHold::of(&req);
        let shutdown = Shutdown::of(&req);
        // What an auth layer granted, checked at every operation until it expires.
        let grant = pushpull_http::Grant::of(&req).cloned();
        // Compression, when the client offers it in a form the server takes.
        let deflate = self.config.permessage_deflate && deflate::offered(req.headers());
        // The session is the task: one future, holding the session once (a block around it
        // would keep a second copy of what it captured for the socket's whole life).
        // A plain connection's socket, for the fan-outs of its topics to write to.
        let gate = self.fanout.as_ref().and_then(|fanout| fanout.gate_of(&req));
        let session = Session::new(self.clone(), shutdown, grant, deflate, gate);
        // The session logs within the upgrade request's span (transport, peer).
        tokio::spawn(session.serve(on_upgrade, hold).in_current_span());
        let mut response = Response::new(pushpull_http::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is ASCII"),
        );
        if subprotocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        }
        // Other extensions are declined by not naming them.
        if deflate {
            headers.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(deflate::NO_CONTEXT_TAKEOVER),
            );
        }
        Ok(response)
    }
}

/// Refuses an upgrade from a browser page of another origin than the server's own, unless
/// `allowed` lists it (RFC 6455 section 10.2: the server must check `Origin`, since a browser
/// opens a socket for any page).
fn check_origin(headers: &HeaderMap, allowed: &pushpull_http::Cors) -> Result<(), Error> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("").trim();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let same = origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host));
    if same || allowed.allows(origin) {
        return Ok(());
    }
    Err(Error::new(
        pushpull_core::ErrorKind::Forbidden,
        format!(
            "origin {origin:?} may not open a socket here; allow it in transports.ws.allowed_origins"
        ),
    ))
}

/// Checks an upgrade request (RFC 6455 section 4.2.1); returns its key.
fn check_handshake(headers: &HeaderMap) -> Result<String, Error> {
    if !offers(headers, header::UPGRADE, "websocket") {
        return Err(Error::bad_request("this is a WebSocket endpoint: send Upgrade: websocket"));
    }
    if !offers(headers, header::CONNECTION, "upgrade") {
        return Err(Error::bad_request("a WebSocket handshake needs Connection: Upgrade"));
    }
    let version = headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok());
    if version != Some("13") {
        return Err(Error::bad_request(
            "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| k.len() == 24 && k.ends_with("=="))
        .ok_or_else(|| Error::bad_request("Sec-WebSocket-Key must be 16 bytes in base64"))?;
    Ok(key.to_owned())
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn offers(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

type Socket = WebSocketStream<Inflating<GatedIo<TokioIo<hyper::upgrade::Upgraded>>>>;

/// Why a session ends, and the close frame to send (if a frame can still be sent).
struct Ending {
    code: u16,
    reason: String,
}

impl Ending {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

/// One socket: its subscriptions and its requests.
struct Session {
    server: Arc<Sockets>,
    shutdown: Shutdown,
    /// The rights of the token the socket was opened with, if the server checks tokens.
    grant: Option<Grant>,
    /// Keyed by topic and the subscription's name, if it has one.
    subscriptions: SubscriptionSet<Key>,
    /// One unit of the server's subscription gauge per subscription.
    counted: Vec<pushpull_http::Held>,
    /// The presence memberships of the subscriptions to one topic: each member leaves as its
    /// subscription ends (and all of them with the socket).
    members: std::collections::HashMap<Key, pushpull_http::Membership>,
    bad_frames: u32,
    heard: Instant,
    /// A refresh replaced the grant since the session last looked.
    refreshed: bool,
    /// Whether the socket agreed to permessage-deflate.
    deflate: bool,
    /// The socket, as the fan-outs of topics write to it (a plain connection's, with fan-outs
    /// on).
    gate: Option<Arc<Gate>>,
    /// The subscriptions a topic's fan-out writes for (parked in `subscriptions` meanwhile).
    seats: Vec<(Key, Seat)>,
}

/// What resolves when `grant`'s rights end (never, without one).
fn ending_of(grant: Option<&Grant>) -> pushpull_http::Ending {
    match grant.and_then(Grant::ending) {
        Some(ending) => ending,
        None => Box::pin(std::future::pending()),
    }
}

/// What a subscription on a socket follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    /// The topic or prefix the client named.
    Selector(Selector),
    /// What the socket's token may read (a subscribe without a topic): server-decided.
    Granted,
}

impl Target {
    /// The `topic` field of its frames: none for a server-decided subscription.
    fn field(&self) -> Option<String> {
        match self {
            Target::Selector(selector) => Some(selector.to_string()),
            Target::Granted => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Selector(selector) => selector.fmt(f),
            Target::Granted => f.write_str("what the token may read"),
        }
    }
}

/// A subscription on a socket: what it follows and its name (`sub`), if the client gave one.
type Key = (Target, Option<String>);

/// The name a subscription's frames carry: the one the client gave; without one, a prefix
/// subscription's prefix (`orders:*`, which no topic name can be), and a server-decided
/// subscription's [`wire::GRANTED`].
fn label(key: &Key) -> Option<Cow<'_, str>> {
    match key {
        (_, Some(sub)) => Some(Cow::Borrowed(sub)),
        (Target::Selector(selector @ Selector::Prefix(_)), None) => {
            Some(Cow::Owned(selector.to_string()))
        }
        (Target::Granted, None) => Some(Cow::Borrowed(wire::GRANTED)),
        (Target::Selector(Selector::Topic(_)), None) => None,
    }
}

enum Event {
    Frame(Option<Result<WsMessage, WsError>>),
    /// A fan-out let a subscription go, or left bytes to write.
    Attention,
    Delivery(Key, Option<Result<Delivery, Error>>),
    Tick,
    Shutdown,
    /// The token expired or was revoked.
    Expired(pushpull_http::Ended),
}

impl Session {
    fn new(
        server: Arc<Sockets>,
        shutdown: Shutdown,
        grant: Option<Grant>,
        deflate: bool,
        gate: Option<Arc<Gate>>,
    ) -> Self {
        Self {
            server,
            shutdown,
            grant,
            subscriptions: SubscriptionSet::new(),
            counted: Vec::new(),
            members: std::collections::HashMap::new(),
            bad_frames: 0,
            heard: Instant::now(),
            refreshed: false,
            deflate,
            gate,
            seats: Vec::new(),
        }
    }

    /// Serves the socket once the upgrade completes; `hold` keeps its connection counted as
    /// open meanwhile.
    ///
    /// Not an `async fn`: one taking `mut self` keeps the session twice in its future (the
    /// argument, and the mutable binding it is moved into), and this future is every socket's.
    fn serve(
        self,
        on_upgrade: hyper::upgrade::OnUpgrade,
        hold: Option<pushpull_http::ConnectionHold>,
    ) -> impl std::future::Future<Output = ()> + Send {
        let mut session = self;
        async move {
            let _connection = hold;
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "the upgrade did not complete");
                    return;
                }
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(session.server.config.read_buffer)
                .max_message_size(Some(session.server.message_limit))
                .max_frame_size(Some(session.server.message_limit))
                // Frames gather until a batch is flushed (one write for many).
                .write_buffer_size(WRITE_BATCH_BYTES)
                .max_write_buffer_size(
                    session.server.config.write_buffer + session.server.message_limit,
                );
            // The peer's compressed messages are inflated before tungstenite reads them, up to
            // the size it accepts.
            let limit = session.deflate.then_some(session.server.message_limit);
            let gated = GatedIo::new(session.gate.clone(), TokioIo::new(upgraded));
            let raw = Inflating::server(gated, limit);
            let mut socket =
                WebSocketStream::from_raw_socket(raw, Role::Server, Some(config)).await;
            let _open = session.server.open.hold();
            session.run(&mut socket).await;
        }
    }

    async fn run(&mut self, socket: &mut Socket) {
        let config = self.server.config.clone();
        let mut ticks =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        // The token's rights end at its expiry, or when it is revoked; a refresh replaces it.
        let mut expired = ending_of(self.grant.as_ref());
        // The subscriptions the socket opened with take seats at once, as do those it asks
        // for (below): what is published after they start is written by the topic's fan-out,
        // not by each connection's own task. (One whose cursor the fan-out has passed is
        // refused, and tries again after its next delivery of its own.)
        if self.gate.is_some() {
            Box::pin(self.take_seats()).await;
        }
        let ending = loop {
            let event = tokio::select! {
                why = &mut expired => Event::Expired(why),
                frame = socket.next() => Event::Frame(frame),
                (key, delivery) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    Event::Delivery(key, delivery)
                }
                _ = ticks.tick() => Event::Tick,
                () = self.shutdown.wait() => Event::Shutdown,
                () = attention(self.gate.as_deref()), if !self.seats.is_empty() => Event::Attention,
            };
            let outcome = match event {
                Event::Frame(None) => break None,
                Event::Frame(Some(Err(error))) => {
                    // A compressed message that did not inflate says why itself.
                    let inflating = socket.get_ref().failure();
                    break inflating
                        .map(|(code, reason)| Ending::new(code, reason))
                        .or_else(|| closing_for(&error));
                }
                Event::Frame(Some(Ok(message))) => {
                    self.heard = Instant::now();
                    // Boxed, as a request's handling is: a frame from the peer is rare on a
                    // subscriber's socket, and its handling need not live in every session.
                    match Box::pin(self.on_frame(socket, message)).await {
                        // A subscribe answered (its reply written first).
                        Ok(()) if self.gate.is_some() && self.unseated() => {
                            Box::pin(self.take_seats()).await;
                            Ok(())
                        }
                        other => other,
                    }
                }
                Event::Delivery(key, delivery) => {
                    let queued = self.queued(key, delivery);
                    // Boxed: a session waits for its next delivery far longer than it takes
                    // to hand one over, and keeps no room for the handing over meanwhile.
                    match Box::pin(self.deliver(socket, queued)).await {
                        Ok(true) if self.gate.is_some() => {
                            Box::pin(self.take_seats()).await;
                            Ok(())
                        }
                        other => other.map(drop),
                    }
                }
                Event::Attention => Box::pin(self.attend(socket)).await,
                Event::Tick if self.heard.elapsed() > config.idle_timeout => {
                    Err(Some(Ending::new(
                        close::IDLE_TIMEOUT,
                        format!("nothing heard for {:?}", config.idle_timeout),
                    )))
                }
                Event::Tick => {
                    // Boxed, as the closing below: once in a while, and a session should not
                    // keep room for it while it waits.
                    Box::pin(send(socket, WsMessage::Ping(Bytes::new()), config.write_timeout))
                        .await
                }
                Event::Shutdown => {
                    Err(Some(Ending::new(close::GOING_AWAY, "the server is shutting down")))
                }
                Event::Expired(why) => Err(Some(Ending::new(close::TOKEN_EXPIRED, why.message()))),
            };
            if let Err(ending) = outcome {
                break ending;
            }
            if std::mem::take(&mut self.refreshed) {
                expired = ending_of(self.grant.as_ref());
            }
        };
        // No fan-out writes after the close frame.
        if let Some(gate) = &self.gate {
            gate.shut();
        }
        self.seats.clear();
        let frame = ending
            .map(|Ending { code, reason }| CloseFrame { code: code.into(), reason: reason.into() });
        Box::pin(finish_closing(socket, frame)).await;
    }

    /// Handles one frame from the peer. `Err` ends the session (with a close frame, or not).
    async fn on_frame(
        &mut self,
        socket: &mut Socket,
        message: WsMessage,
    ) -> Result<(), Option<Ending>> {
        let parsed = match message {
            WsMessage::Text(text) => wire::parse_text(text.as_str()),
            WsMessage::Binary(bytes) => wire::parse_binary(&bytes),
            // tungstenite queues the pong; flushing sends it.
            WsMessage::Ping(_) => return flush(socket, self.server.config.write_timeout).await,
            WsMessage::Pong(_) | WsMessage::Frame(_) => return Ok(()),
            WsMessage::Close(_) => {
                // tungstenite has queued the answering Close (RFC 6455 section 5.5.1); it only
                // leaves with a flush. Then the peer closes its side, or we stop waiting.
                let _ = flush(socket, self.server.config.write_timeout).await;
                return Err(None);
            }
        };
        let write_timeout = self.server.config.write_timeout;
        match parsed {
            Err(bad) => {
                self.bad_frames += 1;
                if self.bad_frames > self.server.config.max_bad_frames {
                    return Err(Some(Ending::new(
                        close::POLICY,
                        format!(
                            "more than {} unreadable requests in a row",
                            self.server.config.max_bad_frames
                        ),
                    )));
                }
                let reply = wire::error_reply(bad.id.as_deref(), None, None, &bad.error);
                send(socket, self.outgoing(wire::reply_frame(&reply)), write_timeout).await
            }
            Ok(incoming) => {
                self.bad_frames = 0;
                // Boxed: a request's handling (a subscribe, a batch of publishes, a fetch) is
                // large and brief; inline, every socket's session would carry room for it
                // for its whole life, idle or not.
                let frame = Box::pin(self.answer(incoming)).await;
                send(socket, self.outgoing(frame), write_timeout).await
            }
        }
    }

    /// An answer as it is sent: compressed, when the socket agreed to permessage-deflate and
    /// it is large enough (a page of a fetch, say).
    fn outgoing(&self, frame: Frame) -> WsMessage {
        let message = ws_message(frame);
        match self.deflate {
            true => deflate::compress(message, self.server.config.deflate_min_bytes),
            false => message,
        }
    }

    /// The frame answering a request: its reply, or an error frame naming it.
    async fn answer(&mut self, incoming: Incoming) -> Frame {
        let id = incoming.request.id().to_owned();
        match self.handle(incoming).await {
            Ok(frame) => frame,
            Err(error) => wire::reply_frame(&wire::error_reply(Some(&id), None, None, &error)),
        }
    }

    async fn handle(&mut self, Incoming { request, payload }: Incoming) -> Result<Frame, Error> {
        let broker = self.server.broker.clone();
        match request {
            Request::Subscribe { id, topic, after, sub, info } => {
                let info = self.server.presences.info_value(info)?;
                let target = match topic {
                    Some(text) => Target::Selector(text.parse()?),
                    None => Target::Granted,
                };
                // What the subscription follows, as its cursor set is written: a prefix's
                // against the prefix alone, a server-decided one's by name.
                let keys = match (&target, &self.grant) {
                    (Target::Selector(selector), grant) => {
                        if let Some(grant) = grant {
                            grant.check_selector(selector)?;
                        }
                        SetKeys::Indexed(vec![selector.clone()])
                    }
                    (Target::Granted, Some(grant)) => {
                        SetKeys::Named(pushpull_http::request::granted(grant)?)
                    }
                    (Target::Granted, None) => {
                        return Err(Error::bad_request(
                            "name a topic or a prefix: a subscription without one follows what \
                             the socket's token may read, and this socket has no token",
                        ));
                    }
                };
                let key = (target, sub);
                if self.subscriptions.contains(&key) {
                    return Err(Error::bad_request(match &key.1 {
                        Some(sub) => format!("already subscribed to {} as {sub:?}", key.0),
                        None => format!(
                            "already subscribed to {} on this socket; name further \
                             subscriptions to it with sub",
                            key.0
                        ),
                    }));
                }
                let max = self.server.config.max_subscriptions;
                if self.subscriptions.len() >= max {
                    return Err(Error::bad_request(format!(
                        "at most {max} subscriptions per socket"
                    )));
                }
                let cursor = match &key.0 {
                    Target::Selector(Selector::Topic(topic)) => {
                        let cursor = parse_cursor(after.as_deref(), Cursor::Latest)?;
                        let subscription = broker
                            .subscribe(topic, cursor)
                            .await
                            .inspect_err(|e| metrics::broker_error("subscribe", e))?;
                        let cursor = subscription.cursor().to_string();
                        let member = self
                            .server
                            .presences
                            .join_held(topic, self.grant.as_ref(), info)
                            .await?;
                        self.subscriptions.insert_as(key.clone(), subscription);
                        if let Some(member) = member {
                            self.members.insert(key.clone(), member);
                        }
                        cursor
                    }
                    Target::Selector(Selector::Prefix(_)) | Target::Granted => {
                        let (start, resume) = match after.as_deref() {
                            Some(set) if CursorSet::is_set(set) => {
                                (Cursor::Latest, Some(keys.parse(set)?))
                            }
                            other => (parse_cursor(other, Cursor::Latest)?, None),
                        };
                        let request = FollowRequest {
                            selectors: keys
                                .selectors()
                                .iter()
                                .map(|s| (s.clone(), start))
                                .collect(),
                            resume,
                            max_topics: self.server.max_topics,
                        };
                        let client: Arc<dyn pushpull_core::Client> = broker.clone();
                        let subscription = pushpull_core::follow(client, request)
                            .await
                            .inspect_err(|e| metrics::broker_error("subscribe", e))?;
                        let cursors = keys.encode(subscription.cursors());
                        self.subscriptions.insert_many_as(key.clone(), subscription);
                        cursors
                    }
                };
                self.counted.push(self.server.subscribed.hold());
                let reply = Reply::Subscribed {
                    id,
                    topic: key.0.field(),
                    sub: label(&key).map(Cow::into_owned),
                    cursor,
                };
                Ok(wire::reply_frame(&reply))
            }
            Request::Unsubscribe { id, topic, sub } => {
                let target = match topic {
                    Some(text) => Target::Selector(text.parse()?),
                    None => Target::Granted,
                };
                let key = (target, sub);
                if !self.forget(&key) {
                    return Err(Error::bad_request(match &key.1 {
                        Some(sub) => format!("not subscribed to {} as {sub:?}", key.0),
                        None => format!("not subscribed to {}", key.0),
                    }));
                }
                Ok(wire::reply_frame(&Reply::Unsubscribed {
                    id: Some(id),
                    topic: key.0.field(),
                    sub: label(&key).map(Cow::into_owned),
                    reason: None,
                }))
            }
            Request::Publish { id, topic, event, content_type, key, data, data_base64 } => {
                let topic = Topic::new(topic)?;
                if let Some(grant) = &self.grant {
                    grant.check_publish(&topic)?;
                }
                let payload = match (payload, data, data_base64) {
                    (Some(payload), None, None) => payload,
                    (None, Some(text), None) => Bytes::from(text),
                    (None, None, Some(encoded)) => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .map(Bytes::from)
                            .map_err(|e| {
                            Error::bad_request(format!("data_base64 is not base64: {e}"))
                        })?
                    }
                    _ => {
                        return Err(Error::bad_request(
                            "a publish carries exactly one of data, data_base64 or a binary payload",
                        ));
                    }
                };
                let publication = pushpull_http::request::publication(
                    payload,
                    event.as_deref(),
                    content_type.as_deref(),
                    key.as_deref(),
                );
                let receipt =
                    metrics::timed_publish(crate::NAME, broker.publish(&topic, publication))
                        .await?;
                Ok(wire::reply_frame(&wire::published(&id, &receipt)))
            }
            Request::PublishMany { id, publications } => {
                let results = pushpull_http::publish_batch(
                    &*broker,
                    publications,
                    self.grant.as_ref(),
                    crate::NAME,
                )
                .await?;
                Ok(wire::reply_frame(&Reply::PublishedMany { id, results }))
            }
            Request::Refresh { id, token } => {
                let renewed = self.refresh(&token)?;
                let expires = renewed
                    .expires
                    .map(|at| at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                self.grant = Some(renewed);
                self.refreshed = true;
                Ok(wire::reply_frame(&Reply::Refreshed { id, expires }))
            }
            Request::Presence { id, topic, stats } => {
                let topic = Topic::new(topic)?;
                self.may(Right::Subscribe(topic.as_str()))?;
                let presence = self.server.presences.reader()?;
                let reply = match stats {
                    false => Reply::Presence { id, snapshot: presence.snapshot(&topic).await? },
                    true => Reply::PresenceStats {
                        id,
                        topic: topic.clone(),
                        stats: presence.stats(&topic).await?,
                    },
                };
                Ok(wire::reply_frame(&reply))
            }
            Request::Fetch { id, topic, after, limit } => {
                let topic = Topic::new(topic)?;
                self.may(Right::Subscribe(topic.as_str()))?;
                let cursor = parse_cursor(after.as_deref(), Cursor::Beginning)?;
                let limit =
                    pushpull_http::request::page_limit(limit, 100, self.server.config.max_limit)?;
                let page = broker
                    .fetch(&topic, cursor, limit)
                    .await
                    .inspect_err(|e| metrics::broker_error("fetch", e))?;
                Ok(wire::page_frame(&id, &topic, &page))
            }
        }
    }

    /// The rights of `token`, which is to replace the socket's: checked as at the upgrade, for
    /// the same subject, granting what every subscription of the socket reads.
    fn refresh(&self, token: &str) -> Result<Grant, Error> {
        let Some(current) = &self.grant else {
            return Err(Error::bad_request(
                "this server checks no tokens: there is no token to refresh",
            ));
        };
        let Some(checker) = &current.checker else {
            return Err(Error::bad_request(
                "this socket was opened without a token: open one with a token to refresh it",
            ));
        };
        let mut renewed = checker.check_token(token)?;
        // The next refresh is checked the same way.
        renewed.checker.get_or_insert_with(|| checker.clone());
        if renewed.subject != current.subject {
            return Err(Error::new(
                pushpull_core::ErrorKind::Forbidden,
                format!(
                    "a refresh keeps the socket's subject ({}); the new token is for {}",
                    current.subject.as_deref().unwrap_or("none"),
                    renewed.subject.as_deref().unwrap_or("none"),
                ),
            ));
        }
        for (target, _) in self.subscriptions.keys() {
            let kept = match target {
                Target::Selector(selector) => renewed.check_selector(selector),
                Target::Granted if renewed.subscribe == current.subscribe => Ok(()),
                Target::Granted => Err(Error::new(
                    pushpull_core::ErrorKind::Forbidden,
                    "the subscription without a topic follows the old token's rights, and the \
                     new token's differ",
                )),
            };
            kept.map_err(|error| {
                Error::new(
                    error.kind(),
                    format!(
                        "{}; unsubscribe what it does not grant before refreshing",
                        error.message()
                    ),
                )
            })?;
        }
        Ok(renewed)
    }

    /// Ends the subscription `key` (on request, or because the server ended it): its count
    /// and its membership go with it. Whether there was one.
    fn forget(&mut self, key: &Key) -> bool {
        if !self.subscriptions.remove(key) {
            return false;
        }
        // Its fan-out writes no more for it (before the reply saying it ended is written).
        self.seats.retain(|(seated, _)| seated != key);
        self.counted.pop();
        self.members.remove(key);
        true
    }

    /// Whether the socket's token grants `right` (always, when the server checks no tokens).
    fn may(&self, right: Right<'_>) -> Result<(), Error> {
        self.grant.as_ref().map_or(Ok(()), |grant| grant.check(right))
    }

    /// Sends `first` and the deliveries ready right now after it (up to [`MAX_BATCH`]), then
    /// flushes once: one write for a burst, under one deadline for the peer to take it.
    ///
    /// What each delivery sends is worked out by [`Session::queued`], outside this future:
    /// every session carries room for this future while it waits, so it holds messages ready
    /// to go, not deliveries and the work of encoding them.
    ///
    /// `Ok(true)` when every subscription had nothing more ready at the end.
    async fn deliver(
        &mut self,
        socket: &mut Socket,
        first: Queued,
    ) -> Result<bool, Option<Ending>> {
        let deadline = Instant::now() + self.server.config.write_timeout;
        let mut next = Some(first);
        let mut batch = 0;
        let mut caught_up = false;
        while let Some(Queued { message, then }) = next.take() {
            feed(socket, message, deadline).await?;
            if let Some(then) = then {
                feed(socket, then, deadline).await?;
            }
            batch += 1;
            if batch < MAX_BATCH && !self.subscriptions.is_empty() {
                next = self
                    .subscriptions
                    .next()
                    .now_or_never()
                    .map(|(key, delivery)| self.queued(key, delivery));
                caught_up = next.is_none();
            }
        }
        at_once_or_within(deadline, |cx| socket.poll_flush_unpin(cx)).await?;
        Ok(caught_up)
    }

    /// The single-topic subscriptions not seated in their topic's fan-out.
    fn unseated_keys(&self) -> impl Iterator<Item = &Key> {
        self.subscriptions.keys().filter(|key| {
            matches!(key, (Target::Selector(Selector::Topic(_)), None))
                && !self.seats.iter().any(|(seated, _)| seated == *key)
        })
    }

    /// Whether a single-topic subscription is not seated in its topic's fan-out.
    fn unseated(&self) -> bool {
        self.unseated_keys().next().is_some()
    }

    /// Seats each single-topic subscription not seated yet in its topic's fan-out, from its
    /// cursor: called with every delivery of its own written (after a delivery that found
    /// nothing more ready, at the start, after an answered request), so the fan-out can write
    /// from the next message on. One whose cursor the fan-out has passed is refused.
    async fn take_seats(&mut self) {
        let (Some(fanout), Some(gate)) = (&self.server.fanout, &self.gate) else { return };
        let (style, encoder) = match self.deflate {
            false => ("ws", &self.server.encoders[0]),
            true => ("ws-deflate", &self.server.encoders[1]),
        };
        let keys: Vec<Key> = self.unseated_keys().cloned().collect();
        for key in keys {
            let (Target::Selector(Selector::Topic(topic)), _) = &key else { continue };
            let Some(cursor) = self.subscriptions.cursor(&key) else { continue };
            if let Some(seat) = fanout.join(topic, style, encoder, cursor, gate).await {
                self.subscriptions.park(&key);
                // Room for this one only: most sockets follow one topic, and every socket
                // takes its seats before a message now (a first push would make room for four).
                self.seats.reserve_exact(1);
                self.seats.push((key, seat));
            }
        }
    }

    /// Takes back the subscriptions a fan-out let go, from where it left each, and writes what
    /// it left pending.
    async fn attend(&mut self, socket: &mut Socket) -> Result<(), Option<Ending>> {
        let mut index = 0;
        while index < self.seats.len() {
            let Some(resume) = self.seats[index].1.let_go() else {
                index += 1;
                continue;
            };
            let (key, _) = self.seats.swap_remove(index);
            if self.subscriptions.cursor(&key) == Some(resume) {
                // Nothing was written for it: its subscription reads on from where it was.
                self.subscriptions.unpark(&key, None);
                continue;
            }
            let (Target::Selector(Selector::Topic(topic)), _) = &key else { continue };
            match self.server.broker.subscribe(topic, resume).await {
                Ok(subscription) => {
                    self.subscriptions.unpark(&key, Some(subscription));
                }
                Err(error) => {
                    metrics::broker_error("subscribe", &error);
                    self.subscriptions.unpark(&key, None);
                    let queued = self.queued(key, Some(Err(error)));
                    self.deliver(socket, queued).await?;
                }
            }
        }
        // What a fan-out left pending, under a deadline on the peer's reading (the fan-out may
        // add more meanwhile).
        if let Some(gate) = &self.gate {
            loop {
                let progress = std::future::poll_fn(|cx| gate.poll_progress(cx));
                match tokio::time::timeout(self.server.config.write_timeout, progress).await {
                    Ok(Ok(true)) => break,
                    Ok(Ok(false)) => continue,
                    Ok(Err(_)) => return Err(None),
                    Err(_) => {
                        return Err(Some(Ending::new(
                            close::SLOW_CONSUMER,
                            "the peer stopped reading",
                        )));
                    }
                }
            }
        }
        let deadline = Instant::now() + self.server.config.write_timeout;
        at_once_or_within(deadline, |cx| socket.poll_flush_unpin(cx)).await
    }

    /// What one delivery sends: the message, or, when the subscription ended (the broker
    /// failed or ended it), its error and its end, the subscription being forgotten.
    fn queued(&mut self, key: Key, delivery: Option<Result<Delivery, Error>>) -> Queued {
        let (failure, reason) = match delivery {
            Some(Ok(delivery)) => {
                let deflate = self.deflate.then_some(self.server.config.deflate_min_bytes);
                let message = pushed(&delivery, label(&key).as_deref(), deflate);
                self.server.meter.delivered(&delivery);
                self.server.meter.bytes(message.len());
                return Queued { message, then: None };
            }
            Some(Err(error)) => {
                metrics::broker_error("subscribe", &error);
                let topic = key.0.field();
                let reply =
                    wire::error_reply(None, topic.as_deref(), label(&key).as_deref(), &error);
                (Some(ws_message(wire::reply_frame(&reply))), error.message().to_owned())
            }
            None => (None, "the broker ended it".to_owned()),
        };
        self.forget(&key);
        let ended = Reply::Unsubscribed {
            id: None,
            topic: key.0.field(),
            sub: label(&key).map(Cow::into_owned),
            reason: Some(reason),
        };
        let ended = ws_message(wire::reply_frame(&ended));
        match failure {
            Some(failure) => Queued { message: failure, then: Some(ended) },
            None => Queued { message: ended, then: None },
        }
    }
}

/// What a delivery sends: a message, and sometimes one after it.
struct Queued {
    message: WsMessage,
    then: Option<WsMessage>,
}

/// The most deliveries sent in one batch before a flush.
const MAX_BATCH: usize = 64;
/// Frames gather in the socket's buffer up to this many bytes before it writes on its own.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Waits for `gate` to need its session's attention (forever without one).
async fn attention(gate: Option<&Gate>) {
    match gate {
        Some(gate) => gate.attention().await,
        None => std::future::pending().await,
    }
}

/// What a fan-out writes for `delivery`: the frame [`pushed`] sends to an unnamed
/// subscription, on the wire; made once per message and shared.
fn fanned(delivery: &Delivery, deflate: Option<usize>) -> Bytes {
    static WIRE: EncodingKey = EncodingKey::new();
    static DEFLATED_WIRE: EncodingKey = EncodingKey::new();
    let encode = || wire_bytes(pushed(delivery, None, deflate));
    match (delivery, deflate) {
        (Delivery::Message(message), None) => message.encodings.get_or_encode(&WIRE, encode),
        (Delivery::Message(message), Some(_)) => {
            message.encodings.get_or_encode(&DEFLATED_WIRE, encode)
        }
        (Delivery::Gap(_), _) => encode(),
    }
}

/// `message` as a server sends it: one unmasked frame.
fn wire_bytes(message: WsMessage) -> Bytes {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let frame = match message {
        WsMessage::Text(text) => {
            WireFrame::message(Bytes::from(text), OpCode::Data(Data::Text), true)
        }
        WsMessage::Binary(bytes) => WireFrame::message(bytes, OpCode::Data(Data::Binary), true),
        WsMessage::Frame(frame) => frame,
        WsMessage::Ping(bytes) => WireFrame::ping(bytes),
        WsMessage::Pong(bytes) => WireFrame::pong(bytes),
        WsMessage::Close(close) => WireFrame::close(close),
    };
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).expect("a Vec takes any frame");
    Bytes::from(out)
}

/// The message pushing `delivery` to the subscription named `sub`, compressed from
/// `deflate` bytes on where the socket agreed to permessage-deflate. The first subscription
/// to a topic on a socket is unnamed, so its frames are the same for every subscriber: they
/// are made (and compressed) once per message and shared.
fn pushed(delivery: &Delivery, sub: Option<&str>, deflate: Option<usize>) -> WsMessage {
    static UNNAMED_FRAME: EncodingKey = EncodingKey::new();
    static UNNAMED_DEFLATED: EncodingKey = EncodingKey::new();
    match (delivery, sub, deflate) {
        (Delivery::Message(message), None, None) => message
            .encodings
            .get_or_encode(&UNNAMED_FRAME, || ws_message(wire::delivery_frame(delivery, None))),
        (Delivery::Message(message), None, Some(min_bytes)) => {
            message.encodings.get_or_encode(&UNNAMED_DEFLATED, || {
                deflate::compress(pushed(delivery, None, None), min_bytes)
            })
        }
        (_, _, None) => ws_message(wire::delivery_frame(delivery, sub)),
        (_, _, Some(min_bytes)) => {
            deflate::compress(ws_message(wire::delivery_frame(delivery, sub)), min_bytes)
        }
    }
}

fn ws_message(frame: Frame) -> WsMessage {
    match frame {
        Frame::Text(text) => WsMessage::Text(text.into()),
        Frame::Binary(bytes) => WsMessage::Binary(bytes),
    }
}

/// Hands `message` to the socket's buffer, waiting up to `deadline` for room.
async fn feed(
    socket: &mut Socket,
    message: WsMessage,
    deadline: Instant,
) -> Result<(), Option<Ending>> {
    at_once_or_within(deadline, |cx| socket.poll_ready_unpin(cx)).await?;
    socket.start_send_unpin(message).map_err(|_| None)
}

/// A socket operation done at once when the socket has room, the common case, with no timer
/// made; otherwise [`within`] `deadline` (boxed: a session waiting for its next delivery keeps
/// no room for that wait).
async fn at_once_or_within<P>(deadline: Instant, mut poll: P) -> Result<(), Option<Ending>>
where
    P: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Result<(), WsError>>,
{
    match std::future::poll_fn(&mut poll).now_or_never() {
        Some(done) => done.map_err(|_| None),
        None => Box::pin(within(deadline, std::future::poll_fn(poll))).await,
    }
}

/// Runs a socket operation with `deadline` for the peer to make room; past it the peer is a
/// slow consumer.
async fn within<F>(deadline: Instant, operation: F) -> Result<(), Option<Ending>>
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    match tokio::time::timeout_at(deadline, operation).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(Ending::new(close::SLOW_CONSUMER, "the peer stopped reading"))),
    }
}

fn parse_cursor(text: Option<&str>, default: Cursor) -> Result<Cursor, Error> {
    text.map_or(Ok(default), str::parse)
}

/// Sends one message, waiting at most `timeout` for the peer to take it.
async fn send(
    socket: &mut Socket,
    message: WsMessage,
    timeout: Duration,
) -> Result<(), Option<Ending>> {
    within(Instant::now() + timeout, socket.send(message)).await
}

async fn flush(socket: &mut Socket, timeout: Duration) -> Result<(), Option<Ending>> {
    within(Instant::now() + timeout, socket.flush()).await
}

/// Completes the closing handshake within [`CLOSING_GRACE`]: sends our Close (`frame`, when the
/// server ends the session) and reads until the peer's Close has come and the socket ends. A
/// peer that stopped reading or never answers is dropped when the grace runs out.
async fn finish_closing(socket: &mut Socket, frame: Option<CloseFrame>) {
    let closing = async {
        if let Some(frame) = frame
            && socket.close(Some(frame)).await.is_err()
        {
            return;
        }
        // Frames that were in flight are read and dropped; tungstenite answers a Close, and
        // ends the stream once both Close frames have crossed.
        while let Some(Ok(_)) = socket.next().await {}
    };
    let _ = tokio::time::timeout(CLOSING_GRACE, closing).await;
}

/// How long a closing handshake may take before the socket is dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(2);

/// The close frame for a read error: RFC 6455's code for what the peer did wrong.
fn closing_for(error: &WsError) -> Option<Ending> {
    match error {
        WsError::Utf8(_) => {
            Some(Ending::new(close::INVALID_UTF8, "a text frame was not valid UTF-8"))
        }
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some(Ending::new(
            close::TOO_BIG,
            format!("a message of {size} bytes is over the limit of {max_size}"),
        )),
        WsError::Capacity(other) => Some(Ending::new(close::TOO_BIG, other.to_string())),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(other) => {
            Some(Ending::new(close::PROTOCOL_ERROR, shorten(&other.to_string())))
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        other => Some(Ending::new(close::INTERNAL_ERROR, shorten(&other.to_string()))),
    }
}

/// A close reason fits in 123 bytes.
fn shorten(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket's task is its session's future, one per socket for its whole life: it must
    /// keep the session once (an `async fn serve(mut self)` kept it twice), a pointer to the
    /// server's settings rather than a copy, and no room for handing a delivery over (boxed:
    /// brief) beside its wait for the next. It was 2,368 bytes.
    #[test]
    fn a_sockets_task_keeps_its_session_once() {
        let broker: Arc<dyn Broker> = Arc::new(pushpull_core::MemoryBroker::new());
        let server = WsServer::new(broker, ServerConfig::default()).expect("a server");
        let sockets = Arc::new(server.sockets.clone());
        let session = Session::new(sockets, Shutdown::never(), None, false, None);
        let state = std::mem::size_of_val(&session);
        let mut request = http::Request::new(());
        let task = session.serve(hyper::upgrade::on(&mut request), None);
        let kept = std::mem::size_of_val(&task);
        assert!(kept <= 1536, "the session is {state} bytes, a socket's task {kept}");
    }
}
