//! Settings of the webhook server and receiver.

use std::net::SocketAddr;
use std::time::Duration;

use pushpull_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// What an endpoint does when a message has used up its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Record the message as dead and go on with the next one.
    #[default]
    Skip,
    /// Record it as dead and pause the endpoint on it until `POST /v1/webhooks/{id}/resume`.
    Pause,
}

/// Settings of the webhook [`Server`](crate::WebhookServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The delay before each attempt of a message: the first is usually zero. The default is
    /// close to the common production schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
    /// 10 h. Each delay gets ±10 % jitter.
    #[serde(with = "durations")]
    pub schedule: Vec<Duration>,
    /// How long one attempt may take, connection included.
    #[serde(with = "pushpull_core::duration_text")]
    pub attempt_timeout: Duration,
    /// The longest `Retry-After` honoured.
    #[serde(with = "pushpull_core::duration_text")]
    pub max_retry_after: Duration,
    /// What happens when a message has used up its attempts.
    pub on_exhausted: OnExhausted,
    /// Deliver to loopback addresses.
    pub allow_loopback: bool,
    /// Deliver to private, link-local and unique-local addresses.
    pub allow_private: bool,
    /// The most endpoints registered at once.
    pub max_endpoints: usize,
    /// The most topics one endpoint follows.
    pub max_topics: usize,
    /// Dead messages remembered per endpoint (the oldest are forgotten first).
    pub max_dead: usize,
    /// A PEM file of certificate authorities trusted for `https://` endpoints besides the
    /// system's (receivers with certificates from a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Self {
            schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            attempt_timeout: Duration::from_secs(15),
            max_retry_after: Duration::from_secs(3600),
            on_exhausted: OnExhausted::Skip,
            allow_loopback: false,
            allow_private: false,
            max_endpoints: 1000,
            max_topics: 100,
            max_dead: 100,
            ca_file: None,
        }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, why: &str| {
            Err(Error::new(ErrorKind::Config, format!("webhook.{key}: {why}")))
        };
        if self.schedule.is_empty() {
            return bad("schedule", "needs at least one attempt");
        }
        if self.attempt_timeout.is_zero() {
            return bad("attempt_timeout", "must be more than zero");
        }
        if self.max_endpoints == 0 || self.max_topics == 0 {
            return bad("max_endpoints", "max_endpoints and max_topics must be at least 1");
        }
        Ok(())
    }
}

/// Settings of the webhook [`Client`](crate::WebhookClient) and its receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server's base URL, for publishing, fetching and registering endpoints.
    pub url: String,
    /// With `https://` (or `wss://`): a PEM file of certificate authorities to trust besides
    /// the system's (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bearer token sent to the server. In code,
    /// [`BearerToken::from_source`](pushpull_core::BearerToken::from_source) renews it when it
    /// expires.
    pub token: pushpull_core::BearerToken,
    /// Where the receiver listens.
    pub listen: SocketAddr,
    /// The receiver's URL as the server reaches it; by default `http://` and the address it
    /// listens on.
    pub public_url: Option<String>,
    /// Deliveries whose timestamp is further from now than this are refused as replays.
    #[serde(with = "pushpull_core::duration_text")]
    pub tolerance: Duration,
    /// How often each subscription checks its endpoint still exists on the server (a restarted
    /// server forgets it), registering it again from its last cursor if not.
    #[serde(with = "pushpull_core::duration_text")]
    pub check_interval: Duration,
    /// How long a request to the server may take.
    #[serde(with = "pushpull_core::duration_text")]
    pub request_timeout: Duration,
    /// The largest delivery body accepted.
    pub max_body: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            ca_file: None,
            token: pushpull_core::BearerToken::none(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            tolerance: Duration::from_secs(300),
            check_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_body: 64 * 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// The default settings for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }
}

/// A list of durations as text, such as `["0s", "5s", "5m"]`.
mod durations {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(
        list: &[Duration],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: Vec<String> =
            list.iter().map(|d| humantime::format_duration(*d).to_string()).collect();
        serde::Serialize::serialize(&text, s)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Duration>, D::Error> {
        let text: Vec<String> = serde::Deserialize::deserialize(d)?;
        text.iter()
            .map(|t| pushpull_core::duration_text::parse(t).map_err(serde::de::Error::custom))
            .collect()
    }
}
