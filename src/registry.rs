//! The registry: the transports an application picks from by name, their clients and their
//! servers.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use pushpull_core::{
    Broker, Client, Connect, Cursor, Error, ErrorKind, OpenBroker, SharedState, Topic,
};
use pushpull_http::{Context, Mount, PageConfig, TransportServer};

use crate::ClientConfig;

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

    /// Whether `auto` may pick it: a client that can subscribe to a server by itself (a
    /// webhook receiver cannot: the server must reach it).
    fn probes(&self) -> bool {
        true
    }
}

/// The transports (their clients and their servers) an application can pick from by name. A
/// value, not a global: build one with [`Registry::with_defaults`] and register your own with
/// [`register_client`](Registry::register_client) and
/// [`register_server`](Registry::register_server).
#[derive(Clone, Default)]
pub struct Registry {
    factories: Vec<Arc<dyn TransportFactory>>,
    pub(crate) servers: Vec<Arc<dyn ServerFactory>>,
    brokers: Vec<Arc<dyn BrokerFactory>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transports whose features are enabled, clients and servers.
    pub fn with_defaults() -> Self {
        let mut registry = Self::new();
        crate::register_built_in(&mut registry);
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

    /// The names of the registered clients.
    pub fn names(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.name()).collect()
    }

    /// Adds the server of a transport, under [`S::NAME`](TransportServer::NAME): its settings
    /// are the `[transports.NAME]` section of a server configuration, and a server built from
    /// this registry serves it (unless its section says `enabled = false`). Replaces one of the
    /// same name.
    pub fn register_server<S: TransportServer>(&mut self) -> &mut Self {
        self.servers.retain(|f| f.name() != S::NAME);
        self.servers.push(Arc::new(ServerOf::<S>(PhantomData)));
        self
    }

    /// Adds a broker, under [`B::NAME`](OpenBroker::NAME): `[broker] kind = "NAME"` opens it,
    /// with the other keys of `[broker]` as its settings. Replaces one of the same name.
    pub fn register_broker<B: OpenBroker>(&mut self) -> &mut Self {
        self.brokers.retain(|f| f.name() != B::NAME);
        self.brokers.push(Arc::new(BrokerOf::<B>(PhantomData)));
        self
    }

    /// The names of the registered brokers.
    pub fn broker_names(&self) -> Vec<&'static str> {
        self.brokers.iter().map(|f| f.name()).collect()
    }

    /// The broker `config` asks for, opened. Call it within a tokio runtime (a broker may start
    /// background tasks: Redis's wake-up listener).
    pub fn broker(&self, config: &crate::ServerConfig) -> Result<Arc<dyn Broker>, Error> {
        let factory = self.broker_factory(&config.broker)?;
        let rules = pushpull_core::TopicRules::new(&config.topics)?;
        let broker = factory.open(config.broker.settings(), rules.clone()).map_err(in_broker)?;
        if rules.is_empty() {
            return Ok(broker);
        }
        // What applies above the logs: each family's payload limit, publish rate, history.
        Ok(Arc::new(pushpull_core::RuledBroker::new(broker, rules)))
    }

    /// Where the broker `config` asks for keeps state every node sees, if anywhere.
    pub(crate) fn shared_state(
        &self,
        config: &crate::ServerConfig,
    ) -> Result<Option<Arc<dyn SharedState>>, Error> {
        let factory = self.broker_factory(&config.broker)?;
        factory.shared_state(config.broker.settings()).map_err(in_broker)
    }

    /// Checks `[broker]`: its kind registered, its settings those of that broker.
    pub(crate) fn check_broker(&self, broker: &crate::BrokerConfig) -> Result<(), Error> {
        self.broker_factory(broker)?.check(broker.settings()).map_err(in_broker)
    }

    fn broker_factory(&self, broker: &crate::BrokerConfig) -> Result<&dyn BrokerFactory, Error> {
        if let Some(factory) = self.brokers.iter().find(|f| f.name() == broker.kind) {
            return Ok(&**factory);
        }
        let kind = &broker.kind;
        let why = if crate::BUILT_IN_BROKERS.contains(&kind.as_str()) {
            format!("{kind:?} is not in this build; enable the cargo feature {kind:?} of pushpull")
        } else {
            format!("unknown broker {kind:?}; known: {}", self.broker_names().join(", "))
        };
        Err(Error::new(ErrorKind::Config, format!("broker.kind: {why}")))
    }

    /// Every registered server's settings at their defaults, as a `[transports.NAME]` section
    /// holds them (what a `config check` prints, and what the documentation must name).
    pub fn server_defaults(&self) -> Vec<(&'static str, toml::Table)> {
        self.servers.iter().map(|f| (f.name(), f.defaults())).collect()
    }

    /// Every registered broker's settings at their defaults, as `[broker]` holds them beside
    /// `kind`.
    pub fn broker_defaults(&self) -> Vec<(&'static str, toml::Table)> {
        self.brokers.iter().map(|f| (f.name(), f.defaults())).collect()
    }

    /// The names of the registered servers, in the order they mount.
    pub fn server_names(&self) -> Vec<&'static str> {
        self.servers.iter().map(|f| f.name()).collect()
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
                && !crate::BUILT_IN.contains(&name.as_str())
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
        let message = match crate::BUILT_IN.iter().find(|name| **name == config.transport) {
            Some(name) => format!(
                "transport {name:?} is not in this build; enable the cargo feature {name:?} of pushpull"
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
            .chain(self.factories.iter().filter(|f| !AUTO_ORDER.contains(&f.name()) && f.probes()));
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

    fn probes(&self) -> bool {
        C::PROBES
    }

    fn connect(&self, config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
        let mut settings = config.section(C::NAME)?;
        if config.token.is_set() {
            C::set_token(&mut settings, config.token.clone())?;
        }
        C::connect(settings)
    }
}

/// A transport's server as the registry holds it: its section read into its typed settings.
/// Errors name the key as `NAME.key`.
pub(crate) trait ServerFactory: Send + Sync {
    fn name(&self) -> &'static str;
    /// Checks `section` (the transport's keys, without `enabled`).
    fn check(&self, section: &toml::Table) -> Result<(), Error>;
    /// The page settings it gives, if it is the transport that configures them.
    fn pages(&self, section: &toml::Table) -> Result<Option<PageConfig>, Error>;
    /// Builds it within `context` and says what it mounts.
    fn mount(&self, context: &Context, section: &toml::Table) -> Result<Mount, Error>;
    /// Its default settings, written out.
    fn defaults(&self) -> toml::Table;
}

struct ServerOf<S>(PhantomData<fn() -> S>);

impl<S: TransportServer> ServerOf<S> {
    fn config(section: &toml::Table) -> Result<S::Config, Error> {
        crate::server_config::from_table(section.clone())
            .map_err(|why| Error::new(ErrorKind::Config, format!("{}.{why}", S::NAME)))
    }
}

impl<S: TransportServer> ServerFactory for ServerOf<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn check(&self, section: &toml::Table) -> Result<(), Error> {
        S::check(&Self::config(section)?)
    }

    fn pages(&self, section: &toml::Table) -> Result<Option<PageConfig>, Error> {
        Ok(S::pages(&Self::config(section)?))
    }

    fn mount(&self, context: &Context, section: &toml::Table) -> Result<Mount, Error> {
        Ok(S::build(context, Self::config(section)?)?.mount())
    }

    fn defaults(&self) -> toml::Table {
        toml::Table::try_from(S::Config::default()).unwrap_or_default()
    }
}

/// A broker as the registry holds it: `[broker]`'s keys read into its typed settings. Errors
/// name the key within `[broker]`.
trait BrokerFactory: Send + Sync {
    fn name(&self) -> &'static str;
    fn defaults(&self) -> toml::Table;
    fn check(&self, settings: &toml::Table) -> Result<(), Error>;
    fn open(
        &self,
        settings: &toml::Table,
        rules: pushpull_core::TopicRules,
    ) -> Result<Arc<dyn Broker>, Error>;
    fn shared_state(&self, settings: &toml::Table) -> Result<Option<Arc<dyn SharedState>>, Error>;
}

struct BrokerOf<B>(PhantomData<fn() -> B>);

impl<B: OpenBroker> BrokerOf<B> {
    fn config(settings: &toml::Table) -> Result<B::Config, Error> {
        crate::server_config::from_table(settings.clone())
            .map_err(|why| Error::new(ErrorKind::Config, why))
    }
}

impl<B: OpenBroker> BrokerFactory for BrokerOf<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn defaults(&self) -> toml::Table {
        toml::Table::try_from(B::Config::default()).unwrap_or_default()
    }

    fn check(&self, settings: &toml::Table) -> Result<(), Error> {
        B::check(&Self::config(settings)?)
    }

    fn open(
        &self,
        settings: &toml::Table,
        rules: pushpull_core::TopicRules,
    ) -> Result<Arc<dyn Broker>, Error> {
        B::open_with_rules(Self::config(settings)?, rules)
    }

    fn shared_state(&self, settings: &toml::Table) -> Result<Option<Arc<dyn SharedState>>, Error> {
        B::shared_state(&Self::config(settings)?)
    }
}

/// A broker's error about its settings, naming the key within `[broker]`; other errors (a
/// broker that cannot start) as they are.
fn in_broker(error: Error) -> Error {
    // A `[[topics]]` entry the broker refused names itself.
    if error.kind() == ErrorKind::Config && !error.message().starts_with("topics[") {
        Error::new(ErrorKind::Config, format!("broker.{}", error.message()))
    } else {
        error
    }
}
