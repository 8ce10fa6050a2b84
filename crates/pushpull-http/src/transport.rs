//! The face every transport's server shows, so that a server serving several of them (the
//! `pushpull` facade, or an application of its own) composes them without knowing any by name.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use pushpull_core::{Broker, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::pages::PageConfig;
use crate::router::Route;
use crate::serve::Shutdown;

/// A live count, read when asked.
pub type Reading = Box<dyn Fn() -> usize + Send + Sync>;

/// What a [`LiveCount`] measures, so that a host exports it (as the Prometheus gauges
/// `pushpull_connections` and `pushpull_subscriptions`, labelled with the transport) without
/// knowing the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Measure {
    /// Long-lived connections: open streams, sockets, held requests.
    Connections,
    /// Subscriptions those connections serve.
    Subscriptions,
}

/// One live count a transport's server keeps: a health route reports it as
/// `TRANSPORT_NAME` (`sse_open_streams`), metrics as the gauges of its [`Measure`]s.
pub struct LiveCount {
    /// Its name within the transport (`open_streams`).
    pub name: &'static str,
    /// What it measures.
    pub measures: &'static [Measure],
    /// Reads it.
    pub read: Reading,
}

impl LiveCount {
    /// A count named `name` measuring `measures`, read by `read`.
    pub fn new(
        name: &'static str,
        measures: &'static [Measure],
        read: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        Self { name, measures, read: Box::new(read) }
    }
}

impl Debug for LiveCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCount")
            .field("name", &self.name)
            .field("measures", &self.measures)
            .finish_non_exhaustive()
    }
}

/// The most topics one connection follows unless configured otherwise.
pub const DEFAULT_MAX_TOPICS: usize = 100;

/// What a server shares with every transport it serves: the broker, the shared page route's
/// settings and the browser origins it trusts.
#[derive(Clone)]
#[non_exhaustive]
pub struct Context {
    /// The broker served.
    pub broker: Arc<dyn Broker>,
    /// The page route's settings: a transport serving pages itself (long polling) serves them
    /// with these.
    pub pages: PageConfig,
    /// The transport that pages answered at once (short polls) are counted under: the one that
    /// gave the page settings, else `http`.
    pub page_transport: &'static str,
    /// How long a client may take to send a request body (a publish).
    pub body_timeout: Duration,
    /// The most topics one connection may follow (many topics on one stream, prefixes).
    pub max_topics: usize,
    /// Browser origins allowed to call the server from their pages (CORS); a transport that
    /// checks `Origin` itself (WebSocket upgrades) allows these too.
    pub allowed_origins: Vec<String>,
    /// Presence: whether subscriptions make members, and their bounds.
    pub presence: crate::presence::PresenceConfig,
    /// What else the server's parts share, by type: such as the store where a broker keeps
    /// state every node of a deployment sees (webhook endpoints).
    pub extensions: http::Extensions,
}

impl Context {
    /// A context over `broker`, with default page settings and no trusted origin.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            pages: PageConfig::default(),
            page_transport: crate::publish::SHARED_API,
            body_timeout: Duration::from_secs(30),
            max_topics: DEFAULT_MAX_TOPICS,
            allowed_origins: Vec::new(),
            presence: crate::presence::PresenceConfig::default(),
            extensions: http::Extensions::new(),
        }
    }

    /// With `presence` as the presence settings.
    pub fn with_presence(mut self, presence: crate::presence::PresenceConfig) -> Self {
        self.presence = presence;
        self
    }

    /// What the transports make members with.
    pub fn presences(&self) -> crate::presence::Presences {
        crate::presence::Presences::new(self.broker.clone(), self.presence.clone())
    }

    /// With `pages` as the page route's settings, its short polls counted under `transport`.
    pub fn with_pages(mut self, pages: PageConfig, transport: &'static str) -> Self {
        self.pages = pages;
        self.page_transport = transport;
        self
    }

    /// Letting one connection follow at most `max` topics.
    pub fn with_max_topics(mut self, max: usize) -> Self {
        self.max_topics = max;
        self
    }

    /// Giving clients `timeout` to send a request body.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Trusting `origins` too.
    pub fn with_allowed_origins(mut self, origins: impl IntoIterator<Item = String>) -> Self {
        self.allowed_origins.extend(origins);
        self
    }
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("pages", &self.pages)
            .field("page_transport", &self.page_transport)
            .field("body_timeout", &self.body_timeout)
            .field("allowed_origins", &self.allowed_origins)
            .field("presence", &self.presence)
            .finish_non_exhaustive()
    }
}

/// A listener a transport owns, for a wire that is not HTTP on the server's port (raw TCP,
/// QUIC): the server runs it beside its HTTP listener and stops it with the same shutdown.
pub trait OwnListener: Send + 'static {
    /// The address it listens on.
    fn local_addr(&self) -> SocketAddr;

    /// Serves until `shutdown` fires, then returns (closing its connections).
    fn run(self: Box<Self>, shutdown: Shutdown) -> BoxFuture<'static, ()>;
}

/// What a transport adds to a server: its routes (beside the shared HTTP API), its live counts
/// and, when it needs one, its own listener.
#[derive(Default)]
#[non_exhaustive]
pub struct Mount {
    /// Its routes. A route with the method and pattern of one mounted before replaces it (long
    /// polling's page route replaces the plain one).
    pub routes: Vec<Route>,
    /// Its live counts.
    pub live: Vec<LiveCount>,
    /// Its own listener, if any.
    pub listener: Option<Box<dyn OwnListener>>,
}

impl Mount {
    /// Mounting `routes`.
    pub fn routes(routes: impl IntoIterator<Item = Route>) -> Self {
        Self { routes: routes.into_iter().collect(), ..Self::default() }
    }

    /// Reporting `count` too.
    pub fn with_live(mut self, count: LiveCount) -> Self {
        self.live.push(count);
        self
    }

    /// Running `listener` too.
    pub fn with_listener(mut self, listener: impl OwnListener) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }
}

impl Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("routes", &self.routes)
            .field("live", &self.live)
            .field("listener", &self.listener.as_ref().map(|l| l.local_addr()))
            .finish()
    }
}

/// A transport's server half, as a server that composes transports by name sees it (the
/// `pushpull` facade registers each with `Registry::register_server`).
pub trait TransportServer: Sized + Send + Sync + 'static {
    /// The transport's name, and its section in a server's configuration:
    /// `[transports.NAME]`.
    const NAME: &'static str;

    /// The transport's server settings, all optional (`#[serde(default)]`), unknown keys
    /// refused.
    type Config: Default + Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    /// Checks the settings; an error names the key as `NAME.key`.
    fn check(config: &Self::Config) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// The page route's settings, when this transport is the one that configures them (short
    /// polling, which is nothing but the page route).
    fn pages(config: &Self::Config) -> Option<PageConfig> {
        let _ = config;
        None
    }

    /// A server within `context`; a bad setting is a `config` error naming its key as
    /// `NAME.key`.
    fn build(context: &Context, config: Self::Config) -> Result<Self, Error>;

    /// What it adds to the server.
    fn mount(&self) -> Mount;
}
