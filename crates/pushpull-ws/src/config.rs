//! Settings of the WebSocket server and client.

use std::time::Duration;

use pushpull_core::{Backoff, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Settings of the WebSocket [`Server`](crate::WsServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How often the server pings each socket.
    #[serde(with = "pushpull_core::duration_text")]
    pub ping_interval: Duration,
    /// A peer that sends nothing (not even a pong) for this long is closed with 4000.
    #[serde(with = "pushpull_core::duration_text")]
    pub idle_timeout: Duration,
    /// A peer that reads nothing for this long while the server has frames for it is closed
    /// with 4001.
    #[serde(with = "pushpull_core::duration_text")]
    pub write_timeout: Duration,
    /// The most subscriptions one socket may hold.
    pub max_subscriptions: usize,
    /// The largest frame or message accepted from a client, in bytes: a frame that declares
    /// more, or a message whose fragments add up to more, closes the socket with 1009 before
    /// the rest is read. Unset (the default), it follows the broker's payload limit:
    /// [`message_limit_for`] of its `max_payload`, so a socket can make the server hold no more
    /// than the largest message it could accept. Set, it can only lower that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// Bytes of unsent frames buffered per socket before writing waits for the peer.
    pub write_buffer: usize,
    /// The read buffer allocated per socket. Requests are small, so a small buffer keeps idle
    /// sockets cheap (tungstenite's own default is 128 KiB); it grows for larger frames.
    pub read_buffer: usize,
    /// Undecodable requests in a row before the socket is closed with 1008.
    pub max_bad_frames: u32,
    /// Page size limit of `fetch`.
    pub max_limit: usize,
    /// Browser origins (`https://app.example.com`, or `*`) whose pages may open a socket. A
    /// page of the server's own origin always may, and so may a client that sends no
    /// `Origin` (not a browser); any other origin is refused with 403, so a page on another
    /// site cannot use a visitor's browser to reach a pushpull on their network.
    pub allowed_origins: Vec<String>,
    /// Compresses messages for a client that offers permessage-deflate (RFC 7692; browsers
    /// and most libraries do), without context takeover either way: each message is
    /// compressed once and its frame shared by every subscriber, and no socket keeps a
    /// compression window. Off, offers are declined.
    pub permessage_deflate: bool,
    /// With `permessage_deflate`, frames (pushed messages, answers) smaller than this many
    /// bytes go uncompressed: compressing a small one saves a few bytes and costs its receiver
    /// more than that.
    pub deflate_min_bytes: usize,
    /// Writes each topic's new messages to its caught-up subscribers from one task per topic
    /// (a fan-out), instead of waking every subscriber's own task; a socket whose buffer is
    /// full, or whose topic has a gap, is served by its own task again. Plain (not TLS)
    /// connections only.
    pub fanout: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            write_timeout: Duration::from_secs(30),
            max_subscriptions: 100,
            max_message_size: None,
            write_buffer: 256 * 1024,
            read_buffer: 1024,
            max_bad_frames: 16,
            max_limit: 1000,
            allowed_origins: Vec::new(),
            permessage_deflate: true,
            deflate_min_bytes: 256,
            fanout: true,
        }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::new(ErrorKind::Config, format!("ws.{key}: {why}")));
        if self.ping_interval.is_zero() {
            return bad("ping_interval", "must be more than zero");
        }
        if self.idle_timeout <= self.ping_interval {
            return bad("idle_timeout", "must be longer than ping_interval");
        }
        if self.write_timeout.is_zero() {
            return bad("write_timeout", "must be more than zero");
        }
        if self.max_subscriptions == 0 || self.max_limit == 0 || self.max_bad_frames == 0 {
            return bad(
                "max_subscriptions",
                "max_subscriptions, max_limit and max_bad_frames must be at least 1",
            );
        }
        if self.max_message_size.is_some_and(|size| size < 1024) {
            return bad("max_message_size", "must be at least 1024");
        }
        Ok(())
    }

    /// The largest message a socket may send, for a broker taking payloads of up to
    /// `max_payload` bytes (`None`: the broker does not say).
    pub fn message_limit(&self, max_payload: Option<usize>) -> usize {
        let follows = message_limit_for(max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD));
        self.max_message_size.map_or(follows, |set| set.min(follows))
    }
}

/// The payload limit assumed when the broker states none.
const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// The largest request that can carry a payload of `max_payload` bytes: in base64 (a browser's
/// `data_base64`, 4/3 of it), plus 64 KiB for the request's other fields. A text payload whose
/// JSON escaping makes it larger is sent in a binary frame (the Rust client does so itself).
pub fn message_limit_for(max_payload: usize) -> usize {
    max_payload.div_ceil(3).saturating_mul(4).saturating_add(64 * 1024)
}

/// Settings of the WebSocket [`Client`](crate::WsClient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server's base URL, such as `http://127.0.0.1:7070` (or `ws://…`); the socket is
    /// opened at `/v1/ws` below it.
    pub url: String,
    /// With `https://` (or `wss://`): a PEM file of certificate authorities to trust besides
    /// the system's (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bearer token sent to the server. In code,
    /// [`BearerToken::from_source`](pushpull_core::BearerToken::from_source) renews it when it
    /// expires.
    pub token: pushpull_core::BearerToken,
    /// How often the client pings.
    #[serde(with = "pushpull_core::duration_text")]
    pub ping_interval: Duration,
    /// A server silent this long is taken for gone: the client reconnects.
    #[serde(with = "pushpull_core::duration_text")]
    pub idle_timeout: Duration,
    /// How long to wait for the handshake, and for the answer to a request.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// Delays between reconnection attempts.
    pub backoff: Backoff,
    /// Deliveries buffered per subscription before the socket waits for the application.
    pub subscription_buffer: usize,
    /// Offers permessage-deflate (RFC 7692) without context takeover: a server that agrees
    /// sends larger messages compressed, and the client keeps no compression window.
    pub permessage_deflate: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            ca_file: None,
            token: pushpull_core::BearerToken::none(),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            request_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            subscription_buffer: 1024,
            permessage_deflate: true,
        }
    }
}

impl ClientConfig {
    /// The default settings for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }
}
