//! The client's configuration and the registry that turns it into a client.

use std::sync::Arc;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use pushpull_core::{BearerToken, Client, Connect, Cursor, Error, ErrorKind, Topic};
use serde::{Deserialize, Serialize};

/// Which transport to use and how. Changing the transport is a one-line change here and no
/// change in code.
///
/// ```toml
/// transport = "poll"          # or "auto"
/// url = "http://127.0.0.1:7070"
///
/// [poll]                      # the transport's own settings, all optional
/// poll_interval = "500ms"
/// ```
///
/// Each transport's settings are a section named after it, holding the keys of its crate's
/// `ClientConfig` (`[sse]`, `[ws]`, …, or a transport registered at run time). A section is
/// checked when a client is made: a key the transport does not know, or a section no registered
/// transport has, is an error that names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientConfig {
    /// A transport name, or `auto` to take the best one the server and network allow.
    pub transport: String,
    /// The server's base URL.
    pub url: String,
    /// With `auto`: how long each transport's probe (a subscription opened and dropped) may
    /// take before the next transport is tried.
    #[serde(with = "pushpull_core::duration_text")]
    pub probe_timeout: Duration,
    /// With `https://`: a PEM file of certificate authorities to trust besides the system's,
    /// for every transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bearer token every transport sends: `token = "…"` for a fixed one, or in code
    /// [`BearerToken::from_source`] with the application's hook, which renews it when the
    /// server refuses it.
    #[serde(skip_serializing_if = "is_unset")]
    pub token: BearerToken,
    /// Each transport's settings, by transport name.
    #[serde(flatten)]
    pub settings: BTreeMap<String, toml::Table>,
}

fn is_unset(token: &BearerToken) -> bool {
    !token.is_set()
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            transport: AUTO.into(),
            url: "http://127.0.0.1:7070".into(),
            probe_timeout: Duration::from_secs(5),
            ca_file: None,
            token: BearerToken::none(),
            settings: BTreeMap::new(),
        }
    }
}

/// Read through a TOML table: the three keys above, and every other key a transport's section.
impl<'de> Deserialize<'de> for ClientConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let table = toml::Table::deserialize(deserializer)?;
        let mut config = ClientConfig::default();
        for (key, value) in table {
            let text = |value: toml::Value| match value {
                toml::Value::String(text) => Ok(text),
                other => Err(D::Error::custom(format!("{key}: expected a string, got {other}"))),
            };
            match key.as_str() {
                "transport" => config.transport = text(value)?,
                "url" => config.url = text(value)?,
                "ca_file" => config.ca_file = Some(text(value)?.into()),
                "token" => config.token = BearerToken::fixed(text(value)?),
                "probe_timeout" => {
                    let value = text(value)?;
                    config.probe_timeout = pushpull_core::duration_text::parse(&value)
                        .map_err(|why| D::Error::custom(format!("probe_timeout: {why}")))?;
                }
                _ => match value {
                    toml::Value::Table(section) => {
                        config.settings.insert(key, section);
                    }
                    _ => {
                        return Err(D::Error::custom(format!(
                            "unknown key `{key}`: expected transport, url, probe_timeout, ca_file, \
                             token or a transport's [section]"
                        )));
                    }
                },
            }
        }
        Ok(config)
    }
}

impl ClientConfig {
    /// A configuration for `transport` at `url`, with default settings.
    pub fn new(transport: impl Into<String>, url: impl Into<String>) -> Self {
        Self { transport: transport.into(), url: url.into(), ..Self::default() }
    }

    /// Parses TOML; unknown keys are errors that name the key.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text)
            .map_err(|e: toml::de::Error| Error::new(ErrorKind::Config, e.message().trim()))
    }

    /// Sets one of `transport`'s settings (its section is made if need be).
    pub fn set(mut self, transport: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.settings.entry(transport.to_owned()).or_default().insert(key.into(), value.into());
        self
    }

    /// The settings section of `transport` as a typed config, with `url` filled in; an error
    /// names the key as `[transport] key`.
    pub fn section<T: serde::de::DeserializeOwned>(&self, transport: &str) -> Result<T, Error> {
        let mut table = self.settings.get(transport).cloned().unwrap_or_default();
        table.insert("url".into(), toml::Value::String(self.url.clone()));
        if let Some(ca_file) = &self.ca_file {
            let path = ca_file.to_string_lossy().into_owned();
            table.entry("ca_file").or_insert(toml::Value::String(path));
        }
        crate::server_config::from_table(table)
            .map_err(|why| Error::new(ErrorKind::Config, format!("[{transport}] {why}")))
    }
}

/// The name that picks a transport automatically.
pub const AUTO: &str = "auto";

/// The order `auto` tries transports in: push before pull, richer before simpler. Names that
/// are not registered are passed over.
pub const AUTO_ORDER: [&str; 5] = ["ws", "sse", "stream", "longpoll", "poll"];

/// Makes clients of one transport.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// The transport's name in configuration.
    fn name(&self) -> &'static str;

    /// A client configured by `config` (whose `transport` names this factory or `auto`).
    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error>;
}

/// The transports an application can pick from by name. A value, not a global: build one with
/// [`Registry::with_defaults`] and [`register`](Registry::register) your own.
#[derive(Clone, Default)]
pub struct Registry {
    factories: Vec<Arc<dyn TransportFactory>>,
}

/// Transports this workspace has, with the cargo feature that brings each in.
const KNOWN: [(&str, &str); 6] = [
    ("poll", "poll"),
    ("longpoll", "longpoll"),
    ("sse", "sse"),
    ("ws", "ws"),
    ("stream", "stream"),
    ("webhook", "webhook"),
];

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transports whose features are enabled.
    pub fn with_defaults() -> Self {
        #[allow(unused_mut)]
        let mut registry = Self::new();
        #[cfg(feature = "poll")]
        registry.register_client::<pushpull_poll::PollClient>();
        #[cfg(feature = "longpoll")]
        registry.register_client::<pushpull_longpoll::LongpollClient>();
        #[cfg(feature = "sse")]
        registry.register_client::<pushpull_sse::SseClient>();
        #[cfg(feature = "ws")]
        registry.register_client::<pushpull_ws::WsClient>();
        #[cfg(feature = "stream")]
        registry.register_client::<pushpull_stream::StreamClient>();
        #[cfg(feature = "webhook")]
        registry.register_client::<pushpull_webhook::WebhookClient>();
        registry
    }

    /// Adds the transport whose client is `C`, under [`C::NAME`](Connect::NAME): its settings
    /// are the `[NAME]` section of a client configuration.
    pub fn register_client<C: Connect + 'static>(&mut self) -> &mut Self {
        self.register(Arc::new(ConnectFactory::<C>(PhantomData)))
    }

    /// Adds a transport, replacing one of the same name.
    pub fn register(&mut self, factory: Arc<dyn TransportFactory>) -> &mut Self {
        self.factories.retain(|f| f.name() != factory.name());
        self.factories.push(factory);
        self
    }

    /// The registered names.
    pub fn names(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.name()).collect()
    }

    /// A client for `config`. An unknown transport name lists the available ones; a known one
    /// whose feature is off says which feature to turn on. `auto` tries [`AUTO_ORDER`] and
    /// takes the first transport whose push path opens within `probe_timeout`: a subscription
    /// to the topic `pushpull.probe` is opened and dropped, so a server without that
    /// transport, a proxy that refuses WebSocket upgrades or one that buffers streamed
    /// responses all make it fall through to the next. Which transport it got is
    /// `client.capabilities().name`, and a log line at `info` says it.
    pub async fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        if let Some(unknown) = config.settings.keys().find(|name| {
            !self.factories.iter().any(|f| f.name() == name.as_str())
                && !KNOWN.iter().any(|(known, _)| known == name)
        }) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "[{unknown}]: no transport of that name is registered; available: {}",
                    self.names().join(", ")
                ),
            ));
        }
        if config.transport == AUTO {
            return self.connect_auto(config).await;
        }
        if let Some(factory) = self.factories.iter().find(|f| f.name() == config.transport) {
            return factory.connect(config);
        }
        let message = match KNOWN.iter().find(|(name, _)| *name == config.transport) {
            Some((name, feature)) => format!(
                "transport {name:?} is not in this build; enable the cargo feature {feature:?} of pushpull"
            ),
            None => format!(
                "unknown transport {:?}; available: {}, or {AUTO:?}",
                config.transport,
                self.names().join(", ")
            ),
        };
        Err(Error::new(ErrorKind::Config, message))
    }

    async fn connect_auto(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let mut tried = Vec::new();
        let probe = Topic::new("pushpull.probe").expect("valid topic");
        let ordered = AUTO_ORDER
            .iter()
            .filter_map(|name| self.factories.iter().find(|f| f.name() == *name))
            .chain(
                self.factories
                    .iter()
                    .filter(|f| !AUTO_ORDER.contains(&f.name()) && f.name() != "webhook"),
            );
        for factory in ordered {
            let client = match factory.connect(config) {
                Ok(client) => client,
                Err(error) => {
                    tried.push(format!("{}: {}", factory.name(), error.message()));
                    continue;
                }
            };
            // Open the push path itself, as a subscription would: the upgrade, or the stream's
            // first record (which a buffering proxy never lets through), or the first poll.
            let deadline = config.probe_timeout;
            match tokio::time::timeout(deadline, client.subscribe(&probe, Cursor::Latest)).await {
                Ok(Ok(subscription)) => {
                    drop(subscription);
                    tracing::info!(transport = factory.name(), url = %config.url, "auto chose a transport");
                    return Ok(client);
                }
                Ok(Err(error)) => tried.push(format!("{}: {}", factory.name(), error.message())),
                Err(_) => tried.push(format!(
                    "{}: no subscription within {deadline:?} (a proxy may refuse or buffer it)",
                    factory.name()
                )),
            }
        }
        if tried.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no transport is in this build"));
        }
        Err(Error::new(
            ErrorKind::Connect,
            format!("no transport got through: {}", tried.join("; ")),
        ))
    }
}

/// A [`Connect`] client as a [`TransportFactory`]: its settings section, then its constructor.
struct ConnectFactory<C>(PhantomData<fn() -> C>);

impl<C: Connect + 'static> TransportFactory for ConnectFactory<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let mut settings = config.section(C::NAME)?;
        if config.token.is_set() {
            C::set_token(&mut settings, config.token.clone())?;
        }
        C::connect(settings)
    }
}

/// Connects with the default registry: `pushpull::connect(&config)`.
pub async fn connect(config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
    Registry::with_defaults().connect(config).await
}
