//! Settings of the streaming server and client.

use std::time::Duration;

use pushpull_core::{Backoff, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Settings of the streaming [`Server`](crate::StreamServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How often an idle stream gets a heartbeat record.
    #[serde(with = "pushpull_core::duration_text")]
    pub heartbeat: Duration,
    /// Writes each topic's new records to its caught-up streams from one task per topic (a
    /// fan-out), instead of waking every stream's own task; a stream whose socket is full, or
    /// whose topic has a gap, writes its own again. Streams of one topic on plain HTTP/1.1
    /// connections only.
    pub fanout: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(15), fanout: true }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat.is_zero() {
            return Err(Error::new(ErrorKind::Config, "stream.heartbeat: must be more than zero"));
        }
        Ok(())
    }
}

/// The record format a [`Client`](crate::StreamClient) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FramingChoice {
    /// Length-prefixed binary records: exact and compact for any payload.
    #[default]
    Binary,
    /// Newline-delimited JSON.
    Ndjson,
}

/// Settings of the streaming [`Client`](crate::StreamClient).
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
    /// The record format to ask for.
    pub framing: FramingChoice,
    /// A stream silent for this long (no record, no heartbeat) is taken for dead and reopened.
    #[serde(with = "pushpull_core::duration_text")]
    pub idle_timeout: Duration,
    /// How long to wait for a response head, and for `publish` and `fetch`.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// The largest payload accepted from the server.
    pub max_payload: usize,
    /// Delays between reconnection attempts that fail in a row.
    pub backoff: Backoff,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            ca_file: None,
            token: pushpull_core::BearerToken::none(),
            framing: FramingChoice::Binary,
            idle_timeout: Duration::from_secs(45),
            request_timeout: Duration::from_secs(30),
            max_payload: 1024 * 1024 * 1024,
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
