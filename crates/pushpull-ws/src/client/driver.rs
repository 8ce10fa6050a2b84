//! The task that owns the socket: connects and reconnects, sends requests, routes frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pushpull_core::{Delivery, Error, ErrorKind, Selector};
use pushpull_http::tls::{ClientStream, RustlsClientConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Requests awaiting an answer past which those whose callers gave up are dropped.
const PRUNE_PENDING_AT: usize = 64;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::flow::{Follow, OnTheSocket};
use super::{Answer, Command, Key};
use crate::NAME;
use crate::close;
use crate::config::ClientConfig;
use crate::deflate::{self, Inflating};
use crate::wire::{self, Frame, Reply, Request, SUBPROTOCOL};

type Socket = WebSocketStream<Inflating<ClientStream>>;

/// The task that owns the socket.
pub(super) struct Driver {
    pub(super) url: String,
    /// With `wss://`: the TLS settings (offering `http/1.1`).
    pub(super) tls: Option<Arc<RustlsClientConfig>>,
    /// The token the server refused (it closed with [`close::TOKEN_EXPIRED`]); renewed before
    /// the next connection.
    pub(super) rejected: Option<String>,
    pub(super) config: ClientConfig,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) pending: HashMap<String, oneshot::Sender<Result<Answer, Error>>>,
    pub(super) subscriptions: HashMap<Key, Follow>,
    pub(super) last_error: Option<Error>,
    /// Frames the driver decided to send while handling something else.
    pub(super) outbox: Vec<Frame>,
    /// Numbers the driver's own request ids and subscription names.
    pub(super) counter: u64,
    /// The token the socket holds now, and when to refresh it in place (a little before it
    /// expires), when the client has a source of new tokens.
    pub(super) held: Option<String>,
    pub(super) refresh_at: Option<Instant>,
    /// A `refresh` sent and not yet answered: its id and the token it carries.
    pub(super) refreshing: Option<(String, String)>,
}

/// When to refresh `token` in place: before it expires by half of what is left, at most 30
/// seconds (a short token gets its half for the round trip); `None` for a token that is not a
/// JWT with an `exp`.
fn refresh_time(token: &str) -> Option<Instant> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = std::time::UNIX_EPOCH + Duration::from_secs(claims.get("exp")?.as_u64()?);
    let left = exp.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    let lead = (left / 2).min(Duration::from_secs(30));
    Some(Instant::now() + (left - lead))
}

pub(super) enum Step {
    Continue,
    Reconnect,
    Stop,
}

pub(super) fn text(request: &Request) -> Frame {
    Frame::Text(serde_json::to_string(request).expect("requests encode"))
}

impl Driver {
    pub(super) async fn run(mut self) {
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

    async fn connect(&mut self) -> Result<Socket, Error> {
        let mut token = self.config.token.get().await?;
        if let (Some(rejected), Some(current)) = (self.rejected.take(), &token)
            && &rejected == current
        {
            // Without a source to renew it from, the same token goes again, and the server's
            // refusal says why (expired, revoked) rather than that no token came.
            if let Some(renewed) = self.config.token.renew(&rejected).await? {
                token = Some(renewed);
            }
        }
        let socket = match self.handshake(token.as_deref()).await {
            Err((error, Some(401))) if self.config.token.renews() && token.is_some() => {
                let refused = token.clone().unwrap_or_default();
                match self.config.token.renew(&refused).await? {
                    Some(renewed) if renewed != refused => {
                        let socket = self.handshake(Some(&renewed)).await;
                        token = Some(renewed);
                        socket.map_err(|(error, _)| error)
                    }
                    _ => Err(error),
                }
            }
            other => other.map_err(|(error, _)| error),
        }?;
        self.hold(token);
        Ok(socket)
    }

    /// Keeps the token the socket holds now, and when to refresh it, if a source can.
    fn hold(&mut self, token: Option<String>) {
        self.refreshing = None;
        self.refresh_at =
            token.as_deref().filter(|_| self.config.token.renews()).and_then(refresh_time);
        self.held = token;
    }

    /// Asks the token source for the next token and sends it in a `refresh`; without a new
    /// one, the socket runs until the server closes it at expiry and reconnects then.
    async fn refresh(&mut self) {
        self.refresh_at = None;
        let Some(current) = self.held.clone() else { return };
        match self.config.token.renew(&current).await {
            Ok(Some(token)) if token != current => {
                let id = self.next_id("refresh-");
                self.outbox.push(text(&Request::Refresh { id: id.clone(), token: token.clone() }));
                self.refreshing = Some((id, token));
            }
            Ok(_) => tracing::debug!("no new token to refresh the socket with"),
            Err(error) => tracing::debug!(%error, "the token source failed; not refreshing"),
        }
    }

    /// One opening handshake; an error carries the HTTP status that refused it, if one did.
    async fn handshake(&self, token: Option<&str>) -> Result<Socket, (Error, Option<u16>)> {
        let bad_url = |e: &dyn std::fmt::Display| {
            (
                Error::new(ErrorKind::Config, format!("bad url {}: {e}", self.url))
                    .with_transport(NAME),
                None,
            )
        };
        let mut request = self.url.as_str().into_client_request().map_err(|e| bad_url(&e))?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", http::HeaderValue::from_static(SUBPROTOCOL));
        if let Some(token) = token {
            let mut value =
                http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|e| bad_url(&e))?;
            value.set_sensitive(true);
            request.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let deflate = self.config.permessage_deflate;
        if deflate {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                http::HeaderValue::from_static(deflate::NO_CONTEXT_TAKEOVER),
            );
        }
        let host = request.uri().host().unwrap_or_default().to_owned();
        let port = request.uri().port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let config = WebSocketConfig::default().max_write_buffer_size(64 * 1024 * 1024);
        let limit = config.max_message_size.unwrap_or(usize::MAX);
        let tls = self.tls.as_ref();
        let connecting = async {
            let address = (host.trim_start_matches('[').trim_end_matches(']'), port);
            let stream = ClientStream::connect(address, &host, tls)
                .await
                .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
            // Offering compression, the socket reads the answer itself, and inflates what
            // follows if the server agreed.
            let stream =
                if deflate { Inflating::client(stream, limit) } else { Inflating::plain(stream) };
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await
        };
        match tokio::time::timeout(self.config.request_timeout, connecting).await {
            Err(_) => Err((
                Error::new(ErrorKind::Timeout, format!("no handshake with {} in time", self.url))
                    .with_transport(NAME),
                None,
            )),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                Err((refusal(&self.url, &response), Some(response.status().as_u16())))
            }
            Ok(Err(error)) => Err((
                Error::new(ErrorKind::Connect, format!("cannot open {}: {error}", self.url))
                    .with_transport(NAME),
                None,
            )),
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

    pub(super) fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
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
            let refresh_at = self.refresh_at;
            step = tokio::select! {
                _ = catch_up.tick(), if paused => {
                    self.resume_caught_up();
                    Step::Continue
                }
                () = sleep_until_some(refresh_at), if refresh_at.is_some() => {
                    self.refresh().await;
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
                // Requests whose caller gave up waiting (timed out) are not kept.
                if self.pending.len() >= PRUNE_PENDING_AT {
                    self.pending.retain(|_, waiter| !waiter.is_closed());
                }
                self.pending.insert(id, reply);
                if send(socket, frame).await.is_err() {
                    return Step::Reconnect;
                }
            }
            Command::Subscribe { local, selector, track, deliveries, reply } => {
                // The first subscription to a topic (or prefix) goes unnamed; more get a name
                // each.
                let key = match self.subscriptions.contains_key(&(selector.clone(), None)) {
                    false => (selector, None),
                    true => {
                        let sub = self.next_id("s");
                        (selector, Some(sub))
                    }
                };
                let follow = Follow {
                    local,
                    deliveries,
                    position: track,
                    waiting: Some((String::new(), Some(reply))),
                    paused: false,
                    not_before: None,
                    refusals: 0,
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
                        topic: Some(topic.to_string()),
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
                if frame.is_some_and(|f| u16::from(f.code) == close::TOKEN_EXPIRED) {
                    // Reconnect with a renewed token; subscriptions resume from their cursors.
                    self.rejected = self.config.token.get().await.ok().flatten();
                }
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
            Reply::Published { id, .. }
            | Reply::PublishedMany { id, .. }
            | Reply::Page { id, .. }
            | Reply::Presence { id, .. }
            | Reply::PresenceStats { id, .. } => Some(id.clone()),
            _ => None,
        };
        if let Some(id) = answers {
            if let Some(waiter) = self.pending.remove(&id) {
                let _ = waiter.send(Ok((reply, payload)));
            }
            return Step::Continue;
        }
        match reply {
            Reply::Refreshed { id, .. } => {
                if let Some((_, token)) =
                    self.refreshing.take_if(|(refreshing, _)| *refreshing == id)
                {
                    tracing::debug!("the socket took the new token");
                    self.hold(Some(token));
                }
            }
            Reply::Error { id: Some(id), message, .. }
                if self.refreshing.as_ref().is_some_and(|(refreshing, _)| *refreshing == id) =>
            {
                // The socket keeps its token until the server closes it at expiry; the
                // reconnect then asks for a token again.
                tracing::debug!(%message, "the server refused the refresh");
                self.refreshing = None;
            }
            Reply::Message(pushed) => {
                let key = self.key_of(&pushed.item.topic, pushed.sub);
                match wire::message_of(pushed.item, payload) {
                    Ok(message) => self.deliver(&key, Delivery::Message(message)),
                    Err(error) => self.end(&key, error.with_transport(NAME)).await,
                }
            }
            Reply::Gap(pushed) => {
                let key = self.key_of(&pushed.item.topic, pushed.sub);
                match wire::gap_of(pushed.item) {
                    Ok(gap) => self.deliver(&key, Delivery::Gap(gap)),
                    Err(error) => self.end(&key, error.with_transport(NAME)).await,
                }
            }
            Reply::Subscribed { id, topic, sub, cursor } => {
                let Some(key) = subscription_key(topic.as_deref(), sub) else {
                    return Step::Continue;
                };
                if let Some(follow) = self.subscriptions.get_mut(&key)
                    && follow.waiting.as_ref().is_some_and(|(waiting, _)| *waiting == id)
                    && let Some((_, reply)) = follow.waiting.take()
                {
                    follow.not_before = None;
                    follow.refusals = 0;
                    if let Err(error) = follow.position.started(&cursor) {
                        let error = error.with_transport(NAME);
                        match reply {
                            Some(reply) => {
                                let _ = reply.send(Err(error));
                            }
                            None => self.end(&key, error).await,
                        }
                        return Step::Continue;
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(cursor));
                    }
                }
            }
            Reply::Unsubscribed { topic, sub, reason: Some(reason), .. } => {
                let error = Error::new(
                    ErrorKind::Backend,
                    format!("the server ended the subscription: {reason}"),
                );
                if let Some(key) = subscription_key(topic.as_deref(), sub) {
                    self.end(&key, error.with_transport(NAME)).await;
                }
            }
            Reply::Unsubscribed { .. } => {}
            Reply::Error { id, topic, sub, kind, message } => {
                let subscribe = self.subscriptions.iter().find_map(|(key, f)| {
                    f.waiting.as_ref().filter(|(w, _)| Some(w) == id.as_ref()).map(|_| key.clone())
                });
                let error =
                    Error::new(ErrorKind::from_wire(&kind).unwrap_or(ErrorKind::Protocol), message)
                        .with_transport(NAME);
                // A running subscription (resubscribed after a reconnect, resumed, resynced)
                // is tried again when a retry can help; an application's own subscribe gets
                // the error, as does a subscription the server ended.
                let running = subscribe
                    .as_ref()
                    .and_then(|key| self.subscriptions.get(key))
                    .is_some_and(|follow| matches!(follow.waiting, Some((_, None))));
                if let (Some(key), true) = (&subscribe, running && error.is_retryable()) {
                    tracing::debug!(topic = %key.0, %error, "resubscribe refused; retrying");
                    self.retry_later(key);
                } else if let Some(key) =
                    subscribe.or_else(|| subscription_key(topic.as_deref(), sub))
                {
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
            Reply::Published { .. }
            | Reply::PublishedMany { .. }
            | Reply::Page { .. }
            | Reply::Presence { .. }
            | Reply::PresenceStats { .. } => {}
        }
        Step::Continue
    }

    /// The subscription a pushed frame of `topic` belongs to: by its name, or its topic; a
    /// name ending in `*` is the prefix of an unnamed prefix subscription.
    fn key_of(&self, topic: &pushpull_core::Topic, sub: Option<String>) -> Key {
        if let Some(key) = subscription_key(sub.as_deref(), None)
            && matches!(key.0, Selector::Prefix(_))
        {
            return key;
        }
        let key = (Selector::Topic(topic.clone()), sub);
        if key.1.is_none() || self.subscriptions.contains_key(&key) {
            return key;
        }
        // A named prefix subscription.
        self.subscriptions
            .keys()
            .find(|(selector, name)| *name == key.1 && selector.matches(topic))
            .cloned()
            .unwrap_or(key)
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

/// The key of the subscription a reply names: its topic or prefix, and its name (an unnamed
/// prefix subscription's frames carry the prefix as their name). None for a reply without a
/// topic: this client makes no server-decided subscriptions.
fn subscription_key(topic: Option<&str>, sub: Option<String>) -> Option<Key> {
    let selector: Selector = topic?.parse().ok()?;
    let sub = sub.filter(|name| Some(name.as_str()) != topic || selector.prefix().is_none());
    Some((selector, sub))
}

/// Sleeps until `at` (forever with `None`).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn send(socket: &mut Socket, frame: Frame) -> Result<(), ()> {
    let message = match frame {
        Frame::Text(text) => WsMessage::Text(text.into()),
        Frame::Binary(bytes) => WsMessage::Binary(bytes),
    };
    socket.send(message).await.map_err(|_| ())
}

/// The error for an HTTP answer to the upgrade: retryable when the status says a retry can
/// help (a 503 during a deploy), with its `Retry-After`; final otherwise (404: no WebSocket
/// there).
fn refusal(url: &str, response: &http::Response<Option<Vec<u8>>>) -> Error {
    let status = response.status();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        // What the body says (which token problem, which right is missing), final.
        let body = response.body().as_deref().unwrap_or_default();
        let error = pushpull_http::error_from_response(status, body);
        return Error::new(
            error.kind(),
            format!("{url} refused the WebSocket handshake with {status}: {}", error.message()),
        )
        .with_retryable(false)
        .with_transport(NAME);
    }
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
