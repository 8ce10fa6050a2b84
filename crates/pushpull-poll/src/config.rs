//! Settings of the polling server and client.

use std::time::Duration;

use pushpull_core::{Backoff, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Settings of the polling [`Server`](crate::Server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The interval the server asks clients to poll at (the `Pushpull-Poll-Interval-Ms` hint).
    #[serde(with = "pushpull_core::duration_text")]
    pub poll_interval: Duration,
    /// Messages per page when the request gives no `limit`.
    pub default_limit: usize,
    /// The largest `limit` accepted; more is a 400.
    pub max_limit: usize,
    /// A page stops growing past this many payload bytes (it always holds at least one message).
    pub max_page_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            default_limit: 100,
            max_limit: 1000,
            max_page_bytes: 8 * 1024 * 1024,
        }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::new(ErrorKind::Config, format!("poll.{key}: {why}")));
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be more than zero");
        }
        if self.max_limit == 0 {
            return bad("max_limit", "must be at least 1");
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return bad("default_limit", "must be between 1 and max_limit");
        }
        if self.max_page_bytes == 0 {
            return bad("max_page_bytes", "must be at least 1");
        }
        Ok(())
    }
}

/// Settings of the polling [`Client`](crate::Client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The server's base URL, such as `http://127.0.0.1:7070`.
    pub url: String,
    /// How often a subscription polls when the server gives no hint.
    #[serde(with = "pushpull_core::duration_text")]
    pub poll_interval: Duration,
    /// Whether the server's `Pushpull-Poll-Interval-Ms` hint replaces `poll_interval`.
    pub honour_server_hint: bool,
    /// Messages asked for per poll.
    pub page_limit: usize,
    /// How long one request may take.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// Delays between retries after a failed poll.
    pub backoff: Backoff,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            poll_interval: Duration::from_secs(1),
            honour_server_hint: true,
            page_limit: 100,
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
