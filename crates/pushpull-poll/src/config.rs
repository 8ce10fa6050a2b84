//! Settings of the polling server and client.

use std::time::Duration;

use pushpull_core::Backoff;
use serde::{Deserialize, Serialize};

/// Settings of the polling [`Client`](crate::PollClient).
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
            poll_interval: Duration::from_secs(1),
            honour_server_hint: true,
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
