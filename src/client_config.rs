//! The client's configuration and the registry that turns it into a client.

use std::sync::Arc;

use async_trait::async_trait;
use pushpull_core::{Client, Cursor, Error, ErrorKind, Topic};
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// A transport name, or `auto` to take the best one the server and network allow.
    pub transport: String,
    /// The server's base URL.
    pub url: String,
    /// With `auto`: how long each transport's probe (a subscription opened and dropped) may
    /// take before the next transport is tried.
    #[serde(with = "pushpull_core::duration_text")]
    pub probe_timeout: std::time::Duration,
    /// Settings of the polling transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<toml::Table>,
    /// Settings of the long-polling transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longpoll: Option<toml::Table>,
    /// Settings of the Server-Sent Events transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<toml::Table>,
    /// Settings of the WebSocket transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<toml::Table>,
    /// Settings of the chunked streaming transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<toml::Table>,
    /// Settings of the webhook transport (its receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<toml::Table>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            transport: AUTO.into(),
            url: "http://127.0.0.1:7070".into(),
            probe_timeout: std::time::Duration::from_secs(5),
            poll: None,
            longpoll: None,
            sse: None,
            ws: None,
            stream: None,
            webhook: None,
        }
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
            .map_err(|e: toml::de::Error| Error::new(ErrorKind::Config, e.to_string().trim()))
    }

    /// The settings section of `transport` as a typed config, with `url` filled in.
    pub fn section<T: serde::de::DeserializeOwned>(&self, transport: &str) -> Result<T, Error> {
        let mut table = match transport {
            "poll" => self.poll.clone().unwrap_or_default(),
            "longpoll" => self.longpoll.clone().unwrap_or_default(),
            "sse" => self.sse.clone().unwrap_or_default(),
            "ws" => self.ws.clone().unwrap_or_default(),
            "stream" => self.stream.clone().unwrap_or_default(),
            "webhook" => self.webhook.clone().unwrap_or_default(),
            other => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("no settings section for transport {other:?}"),
                ));
            }
        };
        table.insert("url".into(), toml::Value::String(self.url.clone()));
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            Error::new(ErrorKind::Config, format!("[{transport}]: {}", e.to_string().trim()))
        })
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
const KNOWN: [(&str, &str); 5] = [
    ("poll", "poll"),
    ("longpoll", "longpoll"),
    ("sse", "sse"),
    ("ws", "ws"),
    ("stream", "stream"),
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
        registry.register(Arc::new(PollFactory));
        #[cfg(feature = "longpoll")]
        registry.register(Arc::new(LongpollFactory));
        #[cfg(feature = "sse")]
        registry.register(Arc::new(SseFactory));
        #[cfg(feature = "ws")]
        registry.register(Arc::new(WsFactory));
        #[cfg(feature = "stream")]
        registry.register(Arc::new(StreamFactory));
        #[cfg(feature = "webhook")]
        registry.register(Arc::new(WebhookFactory));
        registry
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

#[cfg(feature = "poll")]
struct PollFactory;

#[cfg(feature = "poll")]
#[async_trait]
impl TransportFactory for PollFactory {
    fn name(&self) -> &'static str {
        pushpull_poll::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let settings: pushpull_poll::ClientConfig = config.section(pushpull_poll::NAME)?;
        Ok(Arc::new(pushpull_poll::Client::new(settings)?))
    }
}

#[cfg(feature = "longpoll")]
struct LongpollFactory;

#[cfg(feature = "longpoll")]
#[async_trait]
impl TransportFactory for LongpollFactory {
    fn name(&self) -> &'static str {
        pushpull_longpoll::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let settings: pushpull_longpoll::ClientConfig = config.section(pushpull_longpoll::NAME)?;
        Ok(Arc::new(pushpull_longpoll::Client::new(settings)?))
    }
}

#[cfg(feature = "sse")]
struct SseFactory;

#[cfg(feature = "sse")]
#[async_trait]
impl TransportFactory for SseFactory {
    fn name(&self) -> &'static str {
        pushpull_sse::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let settings: pushpull_sse::ClientConfig = config.section(pushpull_sse::NAME)?;
        Ok(Arc::new(pushpull_sse::Client::new(settings)?))
    }
}

#[cfg(feature = "ws")]
struct WsFactory;

#[cfg(feature = "ws")]
#[async_trait]
impl TransportFactory for WsFactory {
    fn name(&self) -> &'static str {
        pushpull_ws::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let settings: pushpull_ws::ClientConfig = config.section(pushpull_ws::NAME)?;
        Ok(Arc::new(pushpull_ws::Client::new(settings)?))
    }
}

#[cfg(feature = "stream")]
struct StreamFactory;

#[cfg(feature = "stream")]
#[async_trait]
impl TransportFactory for StreamFactory {
    fn name(&self) -> &'static str {
        pushpull_stream::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let settings: pushpull_stream::ClientConfig = config.section(pushpull_stream::NAME)?;
        Ok(Arc::new(pushpull_stream::Client::new(settings)?))
    }
}

#[cfg(feature = "webhook")]
struct WebhookFactory;

#[cfg(feature = "webhook")]
#[async_trait]
impl TransportFactory for WebhookFactory {
    fn name(&self) -> &'static str {
        pushpull_webhook::NAME
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let settings: pushpull_webhook::ClientConfig = config.section(pushpull_webhook::NAME)?;
        Ok(Arc::new(pushpull_webhook::Client::new(settings)?))
    }
}

/// Connects with the default registry: `pushpull::connect(&config)`.
pub async fn connect(config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
    Registry::with_defaults().connect(config).await
}
