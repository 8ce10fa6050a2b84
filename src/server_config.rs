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
    /// `[tls]`: serve HTTPS with this certificate and key; absent serves plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<pushpull_http::TlsFiles>,
    /// `[auth]`: every request needs a token granting what it does (see `pushpull_auth`);
    /// absent, anyone who reaches the server may do anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<pushpull_auth::AuthConfig>,
    /// The transports served, each with its settings.
    pub transports: TransportsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            broker: BrokerConfig::default(),
            http: HttpConfig::default(),
            tls: None,
            auth: None,
            transports: TransportsConfig::default(),
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory` (the embedded broker, the default) or `redis` (several server processes on one
    /// Redis serve one log).
    pub kind: BrokerKind,
    /// With `redis`: the server, `redis://HOST:PORT/DB`, `rediss://…` (TLS) or
    /// `redis+unix:///PATH`.
    pub url: String,
    /// With `redis`: prepended to every key and channel, so deployments can share a Redis.
    pub key_prefix: String,
    /// With `redis` and a `rediss://` URL: a PEM file of the certificate authority to trust
    /// instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// The most topics held at once (a topic exists from its first publish; subscribing
    /// takes none).
    pub max_topics: usize,
    /// With `memory`: when the topic table is full, topics without a publish, a fetch or a
    /// reader for this long are released (their messages too; a reader coming back gets a
    /// gap) to make room.
    #[serde(with = "pushpull_core::duration_text")]
    pub idle_topic_timeout: Duration,
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
    /// [`RedisBroker`](pushpull_redis::RedisBroker): the log in Redis Streams.
    #[cfg(feature = "redis")]
    Redis,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let memory = MemoryConfig::default();
        Self {
            kind: BrokerKind::Memory,
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "pushpull:".into(),
            ca_file: None,
            max_payload: memory.max_payload,
            max_topics: memory.max_topics,
            idle_topic_timeout: memory.idle_topic_timeout,
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
    /// The most connections open at once (each HTTP/2 stream counts as one more); at the
    /// limit, new ones wait to be accepted. Lowered, with a warning, to what the process's
    /// open-file limit can hold.
    pub max_connections: usize,
    /// The most connections open at once from one client address (IPv4, or an IPv6 /64),
    /// upgraded WebSockets and HTTP/2 streams included; more are answered 429 and closed
    /// within a second.
    pub max_connections_per_address: usize,
    /// The largest request head (request line and headers) accepted, in bytes; a larger one
    /// is answered 431. At least 8 KiB.
    pub max_header_bytes: usize,
    /// Log one line per request (target `pushpull::access`: method, path without the query,
    /// status, time to the response head, peer address).
    pub access_log: bool,
    /// Serve `GET /metrics` (Prometheus text format; with `[auth]`, for admin tokens only).
    pub metrics: bool,
    /// Serve the demo page (`/demo`), the browser client (`/pushpull/pushpull.js`) and the
    /// demo's ticker: `auto` (only when listening on a loopback address), `on` or `off`.
    pub demo: crate::Demo,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let serve = pushpull_http::ServeConfig::default();
        Self {
            header_read_timeout: serve.header_read_timeout,
            body_timeout: Duration::from_secs(30),
            shutdown_grace: serve.shutdown_grace,
            cors_origins: Vec::new(),
            max_connections: serve.max_connections,
            max_connections_per_address: serve.max_connections_per_address,
            max_header_bytes: serve.max_header_bytes,
            access_log: false,
            metrics: true,
            demo: crate::Demo::Auto,
        }
    }
}

/// `[transports.*]`: each transport's section holds `enabled` and the settings its own crate
/// defines (the crate's `ServerConfig`, embedded as it is, so every key it has can be set here
/// and is documented there). A transport is served when its crate's feature is on and `enabled`
/// is not false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TransportsConfig {
    /// `[transports.poll]`: the page route (`GET /v1/topics/{topic}/messages`), which short
    /// polling is and every HTTP client fetches from: its settings apply whatever transports
    /// are enabled.
    pub poll: Section<pushpull_http::PageConfig>,
    /// `[transports.longpoll]`: the page route holding requests that ask with `?wait=`.
    #[cfg(feature = "longpoll")]
    pub longpoll: Section<pushpull_longpoll::ServerConfig>,
    /// `[transports.sse]`: Server-Sent Events.
    #[cfg(feature = "sse")]
    pub sse: Section<pushpull_sse::ServerConfig>,
    /// `[transports.ws]`: WebSocket. Unless set lower, `max_message_size` follows the broker's
    /// `max_payload` (4/3 of it, for base64, plus 64 KiB): what one socket can make the server
    /// buffer is bounded by the payload limit.
    #[cfg(feature = "ws")]
    pub ws: Section<pushpull_ws::ServerConfig>,
    /// `[transports.stream]`: chunked HTTP streaming.
    #[cfg(feature = "stream")]
    pub stream: Section<pushpull_stream::ServerConfig>,
    /// `[transports.webhook]`: webhooks.
    #[cfg(feature = "webhook")]
    pub webhook: Section<pushpull_webhook::ServerConfig>,
}

/// One transport's section: `enabled`, and the transport crate's own server settings beside it.
///
/// ```toml
/// [transports.ws]
/// enabled = true            # the section's own key
/// ping_interval = "15s"     # the rest are pushpull_ws::ServerConfig's
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section<T> {
    /// Whether to serve the transport.
    pub enabled: bool,
    /// The transport's server settings.
    #[serde(flatten)]
    pub server: T,
}

/// Read through a TOML table, so that an error in the transport's settings names its key (serde's
/// `flatten` would name only the section).
impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Section<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(deserializer)?;
        let enabled = match table.remove("enabled") {
            None => true,
            Some(toml::Value::Boolean(enabled)) => enabled,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "enabled: expected true or false, got {other}"
                )));
            }
        };
        let server = from_table(table).map_err(D::Error::custom)?;
        Ok(Self { enabled, server })
    }
}

impl<T: Default> Default for Section<T> {
    fn default() -> Self {
        Self { enabled: true, server: T::default() }
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
        let in_transports = |e: Error| config_error(format!("transports.{}", e.message()));
        self.memory_config()
            .validate()
            .map_err(|e| config_error(format!("broker: {}", e.message())))?;
        self.transports.poll.server.validate("transports.poll")?;
        #[cfg(feature = "longpoll")]
        self.transports.longpoll.server.validate().map_err(in_transports)?;
        #[cfg(feature = "sse")]
        self.transports.sse.server.validate().map_err(in_transports)?;
        #[cfg(feature = "ws")]
        self.ws_config().validate().map_err(in_transports)?;
        #[cfg(feature = "stream")]
        self.transports.stream.server.validate().map_err(in_transports)?;
        #[cfg(feature = "webhook")]
        self.transports.webhook.server.validate().map_err(in_transports)?;
        let _ = in_transports;
        if self.http.header_read_timeout.is_zero() {
            return Err(config_error("http.header_read_timeout: must be more than zero".into()));
        }
        if self.http.max_header_bytes < 8 * 1024 {
            return Err(config_error("http.max_header_bytes: must be at least 8192".into()));
        }
        Ok(())
    }

    /// The WebSocket server's settings (its message limit follows the broker's `max_payload`,
    /// which the server reads from the broker).
    #[cfg(feature = "ws")]
    pub fn ws_config(&self) -> pushpull_ws::ServerConfig {
        let mut ws = self.transports.ws.server.clone();
        // The origins allowed to call the API from their pages may open sockets too.
        ws.allowed_origins.extend(self.http.cors_origins.iter().cloned());
        ws
    }

    /// The Redis broker's settings.
    #[cfg(feature = "redis")]
    pub fn redis_config(&self) -> pushpull_redis::RedisConfig {
        let memory = self.memory_config();
        pushpull_redis::RedisConfig {
            url: self.broker.url.clone(),
            key_prefix: self.broker.key_prefix.clone(),
            ca_file: self.broker.ca_file.clone(),
            retention: memory.retention,
            max_payload: memory.max_payload,
            max_page: memory.max_page,
            ..pushpull_redis::RedisConfig::default()
        }
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
            idle_topic_timeout: self.broker.idle_topic_timeout,
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

/// `T` from a TOML table; an error names the key it is about (`key: why`), which serde's own
/// errors through `flatten` or a `toml::Value` would not.
pub(crate) fn from_table<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            let why = e.into_inner().message().trim().to_owned();
            match path.as_str() {
                "." | "" => why,
                key => format!("{key}: {why}"),
            }
        },
    )
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(config.transports.poll.server.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_key() {
        #[allow(unused_mut)] // extended only when transport features are on
        let mut cases = vec![
            ("lisen = \"127.0.0.1:1\"", "lisen"),
            ("[broker]\nmax_paylod = 1", "max_paylod"),
            ("[transports.poll]\npoll_interval = 5", "poll_interval"),
            ("[transports.poll]\npoll_interval = \"soon\"", "soon"),
            ("[transports.smoke]\nenabled = true", "smoke"),
            ("listen = \"localhost\"", "listen"),
            ("[broker]\nkind = \"postgres\"", "postgres"),
            ("[broker.retention]\nmax_messages = 0", "max_messages"),
            ("[transports.poll]\nmax_limit = 0", "transports.poll.max_limit"),
            ("[broker]\nmax_payload = 100000000", "max_bytes"),
            ("listen = ", "line 1"),
        ];
        #[cfg(feature = "webhook")]
        cases.extend([
            ("[transports.webhook]\nallow_loopbak = true", "allow_loopbak"),
            ("[transports.webhook]\nschedule = [\"soon\"]", "soon"),
        ]);
        #[cfg(feature = "ws")]
        cases.extend([
            ("[transports.ws]\nping_intervall = \"1s\"", "ping_intervall"),
            ("[transports.ws]\nread_buffer = \"big\"", "read_buffer"),
        ]);
        #[cfg(feature = "sse")]
        cases.push(("[transports.sse]\nheartbeat = \"0s\"", "transports.sse.heartbeat"));
        #[cfg(feature = "longpoll")]
        cases.push(("[transports.longpoll]\nmax_wait = \"0s\"", "transports.longpoll.max_wait"));
        #[cfg(feature = "stream")]
        cases.push(("[transports.stream]\nenabled = \"yes\"", "enabled"));
        for (text, expected) in cases {
            let err = ServerConfig::from_toml(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().contains(expected), "{text:?} gave: {err}");
        }
    }

    #[cfg(all(feature = "ws", feature = "sse"))]
    #[test]
    fn every_key_a_transport_crate_has_can_be_set() {
        let config = ServerConfig::from_toml(
            r#"
            [transports.ws]
            read_buffer = 4096
            max_bad_frames = 3
            [transports.sse]
            enabled = false
            retry = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(config.transports.ws.server.read_buffer, 4096);
        assert_eq!(config.transports.ws.server.max_bad_frames, 3);
        assert!(config.transports.ws.enabled);
        assert!(!config.transports.sse.enabled);
        assert_eq!(config.transports.sse.server.retry, Duration::from_secs(2));
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
        assert_eq!(config.transports.poll.server.poll_interval, Duration::from_secs(2));
        let err =
            ServerConfig::load(None, [("PUSHPULL_LISTN".to_owned(), "x".to_owned())]).unwrap_err();
        assert!(err.message().contains("listn"), "{err}");
    }
}
