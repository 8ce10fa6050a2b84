//! The server's configuration: one TOML file, or the same keys from environment variables.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::collections::BTreeMap;

use pushpull_core::{Error, ErrorKind, OpenBroker};
use pushpull_http::TransportServer;

use crate::Registry;
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
#[non_exhaustive]
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
    #[cfg(feature = "auth")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<pushpull_auth::AuthConfig>,
    /// The transports served, each with its settings.
    pub transports: TransportsConfig,
    /// How the `pushpull` command writes its log: `text` (for a terminal or journald) or `json`
    /// (one object a line, for a log pipeline). An application that embeds the server logs
    /// its own way and ignores it.
    pub log_format: LogFormat,
    /// `[[topics]]`: rules per family of topics (retention, `max_payload`, publish rate,
    /// history), each for a pattern (`chat:*`); the longest matching pattern wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<pushpull_core::TopicRule>,
    /// `[presence]`: who follows each topic (members, their bounds, how long a polling client
    /// stays a member).
    pub presence: pushpull_http::PresenceConfig,
}

/// `log_format`: how the `pushpull` command writes its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: time, level, target, message and fields.
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            broker: BrokerConfig::default(),
            http: HttpConfig::default(),
            tls: None,
            #[cfg(feature = "auth")]
            auth: None,
            transports: TransportsConfig::default(),
            log_format: LogFormat::Text,
            topics: Vec::new(),
            presence: pushpull_http::PresenceConfig::default(),
        }
    }
}

/// `[broker]`: `kind` names a registered broker (`memory`, the embedded default; `redis`,
/// several server processes on one log; or one an application registers), and the other keys
/// are that broker's own settings (its `Config`, embedded as it is: `MemoryConfig`,
/// `RedisConfig`), checked by the [`Registry`] that opens it.
///
/// ```toml
/// [broker]
/// kind = "redis"
/// url = "redis://127.0.0.1:6379"
/// response_timeout = "2s"
/// [broker.retention]
/// max_messages = 1000
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// The broker's name.
    pub kind: String,
    /// Its settings, as written.
    settings: toml::Table,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self::new(pushpull_core::MEMORY_BROKER)
    }
}

impl BrokerConfig {
    /// The broker `kind`, with its default settings.
    pub fn new(kind: impl Into<String>) -> Self {
        Self { kind: kind.into(), settings: toml::Table::new() }
    }

    /// The broker `B` with `config`.
    pub fn of<B: OpenBroker>(config: &B::Config) -> Result<Self, Error> {
        let settings = toml::Table::try_from(config)
            .map_err(|e| config_error(format!("broker: cannot be written: {e}")))?;
        Ok(Self { kind: B::NAME.to_owned(), settings })
    }

    /// Sets one of the broker's settings (checked when the config is).
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.settings.insert(key.to_owned(), value.into());
        self
    }

    /// The settings as written (empty for the defaults).
    pub fn settings(&self) -> &toml::Table {
        &self.settings
    }

    /// The settings of broker `B`, typed (its defaults where not written).
    pub fn config<B: OpenBroker>(&self) -> Result<B::Config, Error> {
        from_table(self.settings.clone()).map_err(|why| config_error(format!("broker.{why}")))
    }

    /// Edits the settings of broker `B`, typed, and makes it the broker:
    /// `config.broker.configure::<MemoryBroker>(|memory| memory.max_payload = 1024)`.
    pub fn configure<B: OpenBroker>(
        &mut self,
        edit: impl FnOnce(&mut B::Config),
    ) -> Result<&mut Self, Error> {
        let mut config =
            if self.kind == B::NAME { self.config::<B>()? } else { B::Config::default() };
        edit(&mut config);
        *self = Self::of::<B>(&config)?;
        Ok(self)
    }
}

impl Serialize for BrokerConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut table = self.settings.clone();
        table.insert("kind".into(), toml::Value::String(self.kind.clone()));
        table.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BrokerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut settings = toml::Table::deserialize(deserializer)?;
        let kind = match settings.remove("kind") {
            None => pushpull_core::MEMORY_BROKER.to_owned(),
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "kind: expected a broker's name, got {other}"
                )));
            }
        };
        Ok(Self { kind, settings })
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
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
    /// The most topics one connection may follow (`/v1/events`, `/v1/stream` and
    /// `/v1/messages` with several topics or prefixes); more is answered with an error that
    /// says so.
    pub max_topics_per_connection: usize,
    /// Log one line per request (target `pushpull::access`: method, path without the query,
    /// status, time to the response head, peer address).
    pub access_log: bool,
    /// Serve `GET /metrics` (Prometheus text format; with `[auth]`, for admin tokens only).
    pub metrics: bool,
    /// Serve the demo page (`/demo`), the browser client (`/pushpull/pushpull.js`) and the
    /// demo's ticker: `auto` (only when listening on a loopback address), `on` or `off`.
    pub demo: crate::Demo,
    /// Bind `listen` with `SO_REUSEPORT` (Unix): several server processes may then listen on
    /// the same address, the kernel spreading new connections among them, and a new process
    /// can start listening before the one it replaces stops (a restart that refuses no
    /// connection). Every process sharing the address must set it.
    pub reuse_port: bool,
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
            max_topics_per_connection: pushpull_http::DEFAULT_MAX_TOPICS,
            access_log: false,
            metrics: true,
            demo: crate::Demo::Auto,
            reuse_port: false,
        }
    }
}

/// `[transports.NAME]`: a section per transport, holding `enabled` and the settings the
/// transport's server registered with (its crate's `ServerConfig`, embedded as it is, so every
/// key it has can be set here and is documented there). A registered transport is served
/// unless its section says `enabled = false`; a section no registered transport has is an
/// error that names the known ones.
///
/// Settings are kept as written and read into the transport's typed settings by the
/// [`Registry`](crate::Registry) that serves them; [`configure`](Self::configure) edits them
/// typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct TransportsConfig(BTreeMap<String, Section<toml::Table>>);

impl TransportsConfig {
    /// Whether the transport `name` is served (when registered): unless its section says
    /// `enabled = false`.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.0.get(name).is_none_or(|section| section.enabled)
    }

    /// Serves the transport `name`, or not.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> &mut Self {
        self.0.entry(name.to_owned()).or_default().enabled = enabled;
        self
    }

    /// Sets one key of the transport `name`'s settings (checked when the config is).
    pub fn set(&mut self, name: &str, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        self.0.entry(name.to_owned()).or_default().server.insert(key.to_owned(), value.into());
        self
    }

    /// The settings written for the transport `name` (empty for the defaults).
    pub fn settings(&self, name: &str) -> toml::Table {
        self.0.get(name).map(|section| section.server.clone()).unwrap_or_default()
    }

    /// The names of the sections written.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The settings of the transport served by `S`, typed.
    pub fn config<S: TransportServer>(&self) -> Result<S::Config, Error> {
        from_table(self.settings(S::NAME))
            .map_err(|why| config_error(format!("transports.{}.{why}", S::NAME)))
    }

    /// Edits the settings of the transport served by `S`, typed:
    /// `config.transports.configure::<pushpull::sse::SseServer>(|sse| sse.retry = …)`.
    pub fn configure<S: TransportServer>(
        &mut self,
        edit: impl FnOnce(&mut S::Config),
    ) -> Result<&mut Self, Error> {
        let mut config = self.config::<S>()?;
        edit(&mut config);
        let table = toml::Table::try_from(&config)
            .map_err(|e| config_error(format!("transports.{}: cannot be written: {e}", S::NAME)))?;
        self.0.entry(S::NAME.to_owned()).or_default().server = table;
        Ok(self)
    }
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
///
/// Only a variable that goes on with one of the [`ENV_SECTIONS`] is a setting; the others that
/// share the prefix (the client's `PUSHPULL_URL`, `PUSHPULL_TOKEN`, `PUSHPULL_TRANSPORT`,
/// `PUSHPULL_CA_FILE`, the logging `PUSHPULL_LOG`, a script's own `PUSHPULL_BIN`) are not read.
pub const ENV_PREFIX: &str = "PUSHPULL_";

/// The top-level keys of [`ServerConfig`], the only names a setting's variable may go on with
/// after [`ENV_PREFIX`]: `PUSHPULL_LISTEN`, `PUSHPULL_BROKER__…`, `PUSHPULL_HTTP__…`,
/// `PUSHPULL_TLS__…`, `PUSHPULL_AUTH__…`, `PUSHPULL_TRANSPORTS__…`, `PUSHPULL_PRESENCE__…`,
/// `PUSHPULL_LOG_FORMAT`.
pub const ENV_SECTIONS: &[&str] =
    &["listen", "broker", "http", "tls", "auth", "transports", "presence", "log_format"];

/// Which of `env` are settings: each as (variable, its key path in lower case), in order. A
/// variable that names a level (`__`) under a key that is not one of the [`ENV_SECTIONS`] is an
/// error, since it can only be a misspelt setting; others are not the server's and are left out.
pub fn env_settings(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, Vec<String>, String)>, Error> {
    let mut settings = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
        let path: Vec<String> = key.split("__").map(|part| part.to_ascii_lowercase()).collect();
        if ENV_SECTIONS.contains(&path[0].as_str()) {
            settings.push((name, path, value));
        } else if path.len() > 1 {
            return Err(config_error(format!(
                "{name}: {} is not a section of the server's config; settings are {}",
                path[0],
                ENV_SECTIONS
                    .iter()
                    .map(|s| format!("{ENV_PREFIX}{}", s.to_ascii_uppercase()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(settings)
}

impl ServerConfig {
    /// Parses TOML text, then checks the values against the transports of
    /// [`Registry::with_defaults`]. Errors name the key.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        Self::from_toml_with(text, &Registry::with_defaults())
    }

    /// Parses TOML text, then checks the values against the transports of `registry`.
    pub fn from_toml_with(text: &str, registry: &Registry) -> Result<Self, Error> {
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| config_error(e.to_string()))?;
        Self::from_table(table, registry)
    }

    /// Reads a TOML file (or nothing, for the defaults), then applies `PUSHPULL_*` variables
    /// from `env`, then checks the values against the transports of
    /// [`Registry::with_defaults`].
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        Self::load_with(path, env, &Registry::with_defaults())
    }

    /// [`load`](Self::load), checking against the transports of `registry`.
    pub fn load_with(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        registry: &Registry,
    ) -> Result<Self, Error> {
        Self::from_table(Self::layers(path, env)?, registry)
    }

    /// As [`load_with`](Self::load_with), but on failure every error there is, not only the
    /// first: each section (and each transport's) is checked on its own, then all together.
    pub fn check_with(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        registry: &Registry,
    ) -> Result<Self, Vec<Error>> {
        let table = Self::layers(path, env).map_err(|e| vec![e])?;
        let first = match Self::from_table(table.clone(), registry) {
            Ok(config) => return Ok(config),
            Err(first) => first,
        };
        let mut errors: Vec<Error> = Vec::new();
        let mut check = |alone: toml::Table| {
            if let Err(error) = Self::from_table(alone, registry)
                && !errors.iter().any(|e| e.message() == error.message())
            {
                errors.push(error);
            }
        };
        for (key, value) in &table {
            match (key.as_str(), value.as_table()) {
                ("transports", Some(transports)) => {
                    for (name, section) in transports {
                        let mut one = toml::Table::new();
                        one.insert(name.clone(), section.clone());
                        check(toml::Table::from_iter([("transports".into(), one.into())]));
                    }
                }
                _ => check(toml::Table::from_iter([(key.clone(), value.clone())])),
            }
        }
        if errors.is_empty() {
            errors.push(first);
        }
        Err(errors)
    }

    /// The file's table with the environment's settings laid over it.
    fn layers(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<toml::Table, Error> {
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
        for (name, path, value) in env_settings(env)? {
            set_env_key(&mut table, &name, &path, &value)?;
        }
        Ok(table)
    }

    fn from_table(table: toml::Table, registry: &Registry) -> Result<Self, Error> {
        #[cfg(not(feature = "auth"))]
        if table.contains_key("auth") {
            return Err(config_error(
                "auth: not in this build; enable the cargo feature \"auth\" of pushpull".into(),
            ));
        }
        // Errors name the key's path (`topics[2].retention.max_age: …`).
        let config: Self = from_table(table).map_err(config_error)?;
        config.validate_with(registry)?;
        Ok(config)
    }

    /// Checks that the values make sense together, against the transports of
    /// [`Registry::with_defaults`]; the error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_with(&Registry::with_defaults())
    }

    /// Checks that the values make sense together, against the transports of `registry`: a
    /// section of a transport it does not have names the ones it has (or the cargo feature
    /// that brings a built-in one in).
    pub fn validate_with(&self, registry: &Registry) -> Result<(), Error> {
        registry.check_broker(&self.broker)?;
        pushpull_core::TopicRules::new(&self.topics)?;
        self.presence.validate()?;
        if !cfg!(feature = "demo") && self.http.demo == crate::Demo::On {
            return Err(config_error(
                "http.demo: the demo is not in this build; enable the cargo feature \"demo\" of \
                 pushpull"
                    .into(),
            ));
        }
        for name in self.transports.names() {
            if registry.servers.iter().any(|f| f.name() == name) {
                continue;
            }
            let why = if crate::BUILT_IN.contains(&name) {
                format!("not in this build; enable the cargo feature {name:?} of pushpull")
            } else {
                format!("no transport of that name; known: {}", registry.server_names().join(", "))
            };
            return Err(config_error(format!("transports.{name}: {why}")));
        }
        for server in &registry.servers {
            server
                .check(&self.transports.settings(server.name()))
                .map_err(|e| config_error(format!("transports.{}", e.message())))?;
        }
        if self.http.header_read_timeout.is_zero() {
            return Err(config_error("http.header_read_timeout: must be more than zero".into()));
        }
        if self.http.max_topics_per_connection == 0 {
            return Err(config_error("http.max_topics_per_connection: must be at least 1".into()));
        }
        if self.http.reuse_port && !cfg!(unix) {
            return Err(config_error(
                "http.reuse_port: SO_REUSEPORT is only available on Unix systems".into(),
            ));
        }
        if self.http.max_header_bytes < 8 * 1024 {
            return Err(config_error("http.max_header_bytes: must be at least 8192".into()));
        }
        Ok(())
    }
}

fn set_env_key(
    table: &mut toml::Table,
    name: &str,
    path: &[String],
    value: &str,
) -> Result<(), Error> {
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
