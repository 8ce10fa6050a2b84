//! Settings of the long-polling server and client.

use std::time::Duration;

use pushpull_core::{Backoff, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Settings of the long-polling [`Server`](crate::LongpollServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The longest a request may be held; a longer `wait` is cut to this. The default stays
    /// below the 60 s idle timeout of common proxies and load balancers.
    #[serde(with = "pushpull_core::duration_text")]
    pub max_wait: Duration,
    /// Answers the polls held at a topic's end from one task per topic (a fan-out), which
    /// writes each new message's answer to all of them, instead of waking every poll's own
    /// task; a poll whose socket is full, or whose topic has a gap, answers itself again. Polls
    /// of one topic on plain HTTP/1.1 connections only.
    pub fanout: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { max_wait: Duration::from_secs(30), fanout: true }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_wait.is_zero() {
            return Err(Error::new(ErrorKind::Config, "longpoll.max_wait: must be more than zero"));
        }
        Ok(())
    }
}

/// Settings of the long-polling [`Client`](crate::LongpollClient).
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
    /// How long each poll asks the server to hold the request (the server may cut it).
    #[serde(with = "pushpull_core::duration_text")]
    pub wait: Duration,
    /// Messages asked for per poll.
    pub page_limit: usize,
    /// How long a request may take beyond `wait`.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// Delays between retries after a failed poll.
    pub backoff: Backoff,
    /// Ask for pages gzip-compressed (`Accept-Encoding: gzip`); the server compresses those
    /// long enough to gain from it.
    pub gzip: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            ca_file: None,
            token: pushpull_core::BearerToken::none(),
            wait: Duration::from_secs(25),
            page_limit: 100,
            request_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            gzip: true,
        }
    }
}

impl ClientConfig {
    /// The default settings for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }
}
