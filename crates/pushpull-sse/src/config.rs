//! Settings of the SSE server and client.

use std::time::Duration;

use pushpull_core::{Backoff, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Settings of the SSE [`Server`](crate::SseServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How often an idle stream gets a comment, so proxies keep it and dead peers are found.
    #[serde(with = "pushpull_core::duration_text")]
    pub heartbeat: Duration,
    /// The reconnection time sent in the `retry:` field.
    #[serde(with = "pushpull_core::duration_text")]
    pub retry: Duration,
    /// Writes each topic's new events to its caught-up streams from one task per topic (a
    /// fan-out), instead of waking every stream's own task; a stream whose socket is full, or
    /// whose topic has a gap, writes its own again. Streams of one topic on plain HTTP/1.1
    /// connections only.
    pub fanout: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(15), retry: Duration::from_secs(1), fanout: true }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat.is_zero() {
            return Err(Error::new(ErrorKind::Config, "sse.heartbeat: must be more than zero"));
        }
        Ok(())
    }
}

/// Settings of the SSE [`Client`](crate::SseClient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server's base URL, such as `http://127.0.0.1:7070`.
    pub url: String,
    /// With `https://` (or `wss://`): a PEM file of certificate authorities to trust besides
    /// the system's (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bearer token sent to the server. In code,
    /// [`BearerToken::from_source`](pushpull_core::BearerToken::from_source) renews it when it
    /// expires.
    pub token: pushpull_core::BearerToken,
    /// A stream silent for this long (no event, no heartbeat) is taken for dead and reopened.
    #[serde(with = "pushpull_core::duration_text")]
    pub idle_timeout: Duration,
    /// How long to wait for a response head, and for `publish` and `fetch`.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// Delays between reconnection attempts that fail in a row.
    pub backoff: Backoff,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            ca_file: None,
            token: pushpull_core::BearerToken::none(),
            idle_timeout: Duration::from_secs(45),
            request_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

impl ClientConfig {
    /// The default settings for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }
}
