//! The server's configuration: one TOML file, or the same keys from environment variables.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pushpull_core::{Error, ErrorKind, MemoryConfig, Retention};
use serde::{Deserialize, Serialize};

/// Everything `pushpull serve` reads. Every section and key is optional; unknown keys are errors.
///
/// ```toml
/// listen = "127.0.0.1:7070"
///
/// [broker]
/// kind = "memory"
/// max_payload = 4194304
///
/// [broker.retention]
/// max_messages = 10000
/// max_age = "1h"
///
/// [http]
/// header_read_timeout = "30s"
///
/// [transports.poll]
/// poll_interval = "1s"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The broker that holds the data.
    pub broker: BrokerConfig,
    /// HTTP serving.
    pub http: HttpConfig,
    /// The transports served, each with its settings.
    pub transports: TransportsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            broker: BrokerConfig::default(),
            http: HttpConfig::default(),
            transports: TransportsConfig::default(),
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory`, the embedded broker (the only one in this build).
    pub kind: BrokerKind,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// The most topics held at once.
    pub max_topics: usize,
    /// What each topic keeps.
    pub retention: RetentionConfig,
}

/// Which broker holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The in-process [`MemoryBroker`](pushpull_core::MemoryBroker).
    #[default]
    Memory,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let memory = MemoryConfig::default();
        Self {
            kind: BrokerKind::Memory,
            max_payload: memory.max_payload,
            max_topics: memory.max_topics,
            retention: RetentionConfig::default(),
        }
    }
}

/// `[broker.retention]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// The most messages kept per topic.
    pub max_messages: usize,
    /// The most payload bytes kept per topic.
    pub max_bytes: usize,
    /// The oldest a message may get, such as `"1h"`; absent keeps messages regardless of age.
    #[serde(
        with = "pushpull_core::duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let retention = Retention::default();
        Self {
            max_messages: retention.max_messages,
            max_bytes: retention.max_bytes,
            max_age: retention.max_age,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// How long a client may take to send a request head (and how long an idle connection
    /// lives).
    #[serde(with = "pushpull_core::duration_text")]
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive.
    #[serde(with = "pushpull_core::duration_text")]
    pub body_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    #[serde(with = "pushpull_core::duration_text")]
    pub shutdown_grace: Duration,
    /// Browser origins allowed to call the API from their pages (CORS), such as
    /// `["https://app.example.com"]`, or `["*"]` for any; empty (the default) allows none.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let serve = pushpull_http::ServeConfig::default();
        Self {
            header_read_timeout: serve.header_read_timeout,
            body_timeout: Duration::from_secs(30),
            shutdown_grace: serve.shutdown_grace,
            cors_origins: Vec::new(),
        }
    }
}

/// `[transports.*]`: each transport's server settings. A transport is served when its crate's
/// feature is on and `enabled` is not false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TransportsConfig {
    /// `[transports.poll]`: short polling.
    pub poll: PollSection,
    /// `[transports.longpoll]`: long polling (the same page route, held with `?wait=`).
    pub longpoll: LongpollSection,
    /// `[transports.sse]`: Server-Sent Events.
    pub sse: SseSection,
    /// `[transports.ws]`: WebSocket.
    pub ws: WsSection,
    /// `[transports.stream]`: chunked HTTP streaming.
    pub stream: StreamSection,
    /// `[transports.webhook]`: webhooks, as the webhook crate's `ServerConfig` reads them.
    #[cfg(feature = "webhook")]
    pub webhook: WebhookSection,
}

/// `[transports.webhook]`: `enabled` and the webhook server's settings (`schedule`,
/// `attempt_timeout`, `on_exhausted`, `allow_loopback`, `allow_private`, …).
#[cfg(feature = "webhook")]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSection {
    /// Whether to serve the registration API and deliver.
    pub enabled: bool,
    /// The webhook server's settings.
    #[serde(flatten)]
    pub server: pushpull_webhook::ServerConfig,
}

#[cfg(feature = "webhook")]
impl Default for WebhookSection {
    fn default() -> Self {
        Self { enabled: true, server: pushpull_webhook::ServerConfig::default() }
    }
}

/// `[transports.stream]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSection {
    /// Whether to serve `/v1/topics/{topic}/stream`.
    pub enabled: bool,
    /// How often an idle stream gets a heartbeat record.
    #[serde(with = "pushpull_core::duration_text")]
    pub heartbeat: Duration,
}

impl Default for StreamSection {
    fn default() -> Self {
        Self { enabled: true, heartbeat: Duration::from_secs(15) }
    }
}

/// `[transports.ws]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsSection {
    /// Whether to accept WebSocket upgrades on `/v1/ws`.
    pub enabled: bool,
    /// How often the server pings each socket.
    #[serde(with = "pushpull_core::duration_text")]
    pub ping_interval: Duration,
    /// A peer silent this long (not even a pong) is closed with 4000.
    #[serde(with = "pushpull_core::duration_text")]
    pub idle_timeout: Duration,
    /// A peer that reads nothing this long while frames wait for it is closed with 4001.
    #[serde(with = "pushpull_core::duration_text")]
    pub write_timeout: Duration,
    /// The most subscriptions one socket may hold.
    pub max_subscriptions: usize,
}

impl Default for WsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            write_timeout: Duration::from_secs(30),
            max_subscriptions: 100,
        }
    }
}

/// `[transports.sse]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseSection {
    /// Whether to serve event streams.
    pub enabled: bool,
    /// How often an idle stream gets a heartbeat comment.
    #[serde(with = "pushpull_core::duration_text")]
    pub heartbeat: Duration,
    /// The reconnection time sent in `retry:`.
    #[serde(with = "pushpull_core::duration_text")]
    pub retry: Duration,
}

impl Default for SseSection {
    fn default() -> Self {
        Self { enabled: true, heartbeat: Duration::from_secs(15), retry: Duration::from_secs(1) }
    }
}

/// `[transports.longpoll]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongpollSection {
    /// Whether to hold requests that ask with `?wait=`.
    pub enabled: bool,
    /// The longest a request is held.
    #[serde(with = "pushpull_core::duration_text")]
    pub max_wait: Duration,
}

impl Default for LongpollSection {
    fn default() -> Self {
        Self { enabled: true, max_wait: Duration::from_secs(30) }
    }
}

/// `[transports.poll]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollSection {
    /// Whether to serve it.
    pub enabled: bool,
    /// The interval clients are asked to poll at.
    #[serde(with = "pushpull_core::duration_text")]
    pub poll_interval: Duration,
    /// Messages per page when a request gives no `limit`.
    pub default_limit: usize,
    /// The largest `limit` accepted.
    pub max_limit: usize,
    /// A page stops growing past this many payload bytes.
    pub max_page_bytes: usize,
}

impl Default for PollSection {
    fn default() -> Self {
        // The same values as `pushpull_http::PageConfig::default()` (a test checks).
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            default_limit: 100,
            max_limit: 1000,
            max_page_bytes: 8 * 1024 * 1024,
        }
    }
}

impl PollSection {
    /// The page route's settings.
    pub fn server_config(&self) -> pushpull_http::PageConfig {
        pushpull_http::PageConfig {
            poll_interval: self.poll_interval,
            default_limit: self.default_limit,
            max_limit: self.max_limit,
            max_page_bytes: self.max_page_bytes,
        }
    }
}

/// The prefix of environment variables that set configuration keys: `PUSHPULL_LISTEN`,
/// `PUSHPULL_BROKER__RETENTION__MAX_MESSAGES` (`__` between levels).
pub const ENV_PREFIX: &str = "PUSHPULL_";

impl ServerConfig {
    /// Parses TOML text, then checks the values. Errors name the key.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| config_error(e.to_string()))?;
        Self::from_table(table)
    }

    /// Reads a TOML file (or nothing, for the defaults), then applies `PUSHPULL_*` variables
    /// from `env`, then checks the values.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut table = match path {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    config_error(format!("cannot read config file {}: {e}", path.display()))
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    config_error(format!(
                        "config file {}: {}",
                        path.display(),
                        e.to_string().trim()
                    ))
                })?
            }
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
            if key.is_empty() || key == "URL" || key == "LOG" {
                continue; // client-side and logging variables share the prefix
            }
            set_env_key(&mut table, &name, key, &value)?;
        }
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, Error> {
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| config_error(e.to_string().trim().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the values make sense together; the error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        self.memory_config()
            .validate()
            .map_err(|e| config_error(format!("broker: {}", e.message())))?;
        self.transports.poll.server_config().validate("transports.poll")?;
        if self.transports.longpoll.max_wait.is_zero() {
            return Err(config_error("transports.longpoll.max_wait must be more than zero".into()));
        }
        #[cfg(feature = "webhook")]
        self.transports
            .webhook
            .server
            .validate()
            .map_err(|e| config_error(format!("transports.{}", e.message())))?;
        if self.transports.stream.heartbeat.is_zero() {
            return Err(config_error("transports.stream.heartbeat must be more than zero".into()));
        }
        if self.transports.sse.heartbeat.is_zero() {
            return Err(config_error("transports.sse.heartbeat must be more than zero".into()));
        }
        if self.http.header_read_timeout.is_zero() {
            return Err(config_error("http.header_read_timeout must be more than zero".into()));
        }
        Ok(())
    }

    /// The memory broker's limits.
    pub fn memory_config(&self) -> MemoryConfig {
        MemoryConfig {
            retention: Retention {
                max_messages: self.broker.retention.max_messages,
                max_bytes: self.broker.retention.max_bytes,
                max_age: self.broker.retention.max_age,
            },
            max_payload: self.broker.max_payload,
            max_topics: self.broker.max_topics,
            ..MemoryConfig::default()
        }
    }
}

fn set_env_key(table: &mut toml::Table, name: &str, key: &str, value: &str) -> Result<(), Error> {
    let path: Vec<String> = key.split("__").map(|part| part.to_ascii_lowercase()).collect();
    let (last, parents) = path.split_last().expect("split yields at least one part");
    let mut current = table;
    for part in parents {
        let entry =
            current.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            config_error(format!("{name}: {part} is a value in the config file, not a section"))
        })?;
    }
    // A value is read as TOML when it parses as one (numbers, booleans), else as a string.
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    current.insert(last.clone(), parsed);
    Ok(())
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "poll")]
    #[test]
    fn poll_defaults_match_the_transport() {
        assert_eq!(PollSection::default().server_config(), pushpull_http::PageConfig::default());
    }

    #[test]
    fn defaults_serve_on_loopback() {
        let config = ServerConfig::from_toml("").unwrap();
        assert_eq!(config.listen.ip().to_string(), "127.0.0.1");
        assert!(config.transports.poll.enabled);
    }

    #[test]
    fn reads_every_section() {
        let config = ServerConfig::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            [broker]
            max_payload = 1024
            [broker.retention]
            max_messages = 5
            max_age = "90s"
            [http]
            header_read_timeout = "5s"
            [transports.poll]
            poll_interval = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.broker.retention.max_age, Some(Duration::from_secs(90)));
        assert_eq!(config.transports.poll.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("lisen = \"127.0.0.1:1\"", "lisen"),
            ("[broker]\nmax_paylod = 1", "max_paylod"),
            ("[transports.poll]\npoll_interval = 5", "poll_interval"),
            ("[transports.poll]\npoll_interval = \"soon\"", "soon"),
            ("[transports.smoke]\nenabled = true", "smoke"),
            ("[transports.webhook]\nallow_loopbak = true", "allow_loopbak"),
            ("[transports.webhook]\nschedule = [\"soon\"]", "soon"),
            ("listen = \"localhost\"", "listen"),
            ("[broker]\nkind = \"postgres\"", "postgres"),
            ("[broker.retention]\nmax_messages = 0", "max_messages"),
            ("[transports.poll]\nmax_limit = 0", "transports.poll.max_limit"),
            ("[broker]\nmax_payload = 100000000", "max_bytes"),
            ("listen = ", "line 1"),
        ];
        for (text, expected) in cases {
            let err = ServerConfig::from_toml(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().contains(expected), "{text:?} gave: {err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = [
            ("PUSHPULL_LISTEN".to_owned(), "127.0.0.1:9100".to_owned()),
            ("PUSHPULL_BROKER__RETENTION__MAX_MESSAGES".to_owned(), "7".to_owned()),
            ("PUSHPULL_TRANSPORTS__POLL__POLL_INTERVAL".to_owned(), "2s".to_owned()),
            ("PUSHPULL_URL".to_owned(), "http://elsewhere".to_owned()),
            ("HOME".to_owned(), "/".to_owned()),
        ];
        let config = ServerConfig::load(None, env).unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.broker.retention.max_messages, 7);
        assert_eq!(config.transports.poll.poll_interval, Duration::from_secs(2));
        let err =
            ServerConfig::load(None, [("PUSHPULL_LISTN".to_owned(), "x".to_owned())]).unwrap_err();
        assert!(err.message().contains("listn"), "{err}");
    }
}
