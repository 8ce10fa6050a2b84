//! A broker of the application's own, registered at run time: `[broker] kind = "ledger"` opens
//! it through the registry, and the whole conformance suite judges it over three transports
//! through one broker harness value, with no code for it in any transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pushpull::{
    Broker, BrokerConfig, Capabilities, Client, Cursor, Error, Fetch, MemoryBroker, MemoryConfig,
    OpenBroker, Page, Publication, Publish, Receipt, Registry, ServerConfig, Subscribe,
    Subscription, Topic,
};
use pushpull_testkit::http::HttpHarness;
use pushpull_testkit::{BrokerHarness, BrokerStore, Limits, OpenedBroker};
use serde::{Deserialize, Serialize};

/// The application's broker: it keeps its logs in a memory broker and counts every publish
/// in a ledger of its own.
struct Ledger {
    log: MemoryBroker,
    entries: Arc<AtomicUsize>,
}

#[async_trait]
impl Publish for Ledger {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        let receipt = self.log.publish(topic, publication).await?;
        self.entries.fetch_add(1, Ordering::Relaxed);
        Ok(receipt)
    }
}

#[async_trait]
impl Fetch for Ledger {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        self.log.fetch(topic, cursor, limit).await
    }
}

#[async_trait]
impl Subscribe for Ledger {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        self.log.subscribe(topic, cursor).await
    }
}

impl Client for Ledger {
    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::full(LedgerBroker::NAME).with_push(true);
        if let Some(max) = self.log.capabilities().max_payload {
            capabilities = capabilities.with_max_payload(max);
        }
        capabilities
    }
}

/// `[broker] kind = "ledger"`: its settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LedgerConfig {
    /// The most messages kept per topic.
    keep: usize,
    /// The largest payload.
    max_payload: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { keep: 1000, max_payload: 1024 * 1024 }
    }
}

/// The registration: how a registry opens a ledger by name.
struct LedgerBroker;

/// Publishes every ledger opened in this process has counted.
static ENTRIES: std::sync::LazyLock<Arc<AtomicUsize>> = std::sync::LazyLock::new(Arc::default);

impl OpenBroker for LedgerBroker {
    const NAME: &'static str = "ledger";
    type Config = LedgerConfig;

    fn check(config: &LedgerConfig) -> Result<(), Error> {
        if config.keep == 0 {
            return Err(Error::new(pushpull::ErrorKind::Config, "keep: must be at least 1"));
        }
        Ok(())
    }

    fn open(config: LedgerConfig) -> Result<Arc<dyn Broker>, Error> {
        let mut memory = MemoryConfig::default();
        memory.retention.max_messages = config.keep;
        memory.retention.max_bytes = config.max_payload * 4;
        memory.max_payload = config.max_payload;
        let log = MemoryBroker::with_config(memory)?;
        Ok(Arc::new(Ledger { log, entries: ENTRIES.clone() }))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::with_defaults();
    registry.register_broker::<LedgerBroker>();
    registry
}

/// Ledgers for the conformance suite, opened by name through the registry with the limits each
/// case asks for.
struct Ledgers;

#[async_trait]
impl BrokerHarness for Ledgers {
    async fn store(&self) -> Result<Box<dyn BrokerStore>, Error> {
        Ok(Box::new(Ledgers))
    }
}

#[async_trait]
impl BrokerStore for Ledgers {
    fn open(&self, limits: &Limits) -> Result<OpenedBroker, Error> {
        let mut config = ServerConfig::default();
        config.broker = BrokerConfig::new("ledger")
            .set("keep", limits.retention_messages as i64)
            .set("max_payload", limits.max_payload as i64);
        let broker = registry().broker(&config)?;
        assert_eq!(broker.capabilities().name, "ledger");
        Ok(OpenedBroker { broker, subscriptions: None })
    }
}

/// The facade's router over the ledger, reached by one transport's client.
fn harness(
    connect: impl Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync + 'static,
) -> HttpHarness {
    HttpHarness::new(
        |broker| {
            let mut config = ServerConfig::default();
            config
                .transports
                .configure::<pushpull::sse::SseServer>(|sse| sse.retry = Duration::from_millis(50))
                .expect("sse settings");
            registry().router(broker, &config).expect("a router")
        },
        connect,
    )
    .over(Ledgers)
}

mod over_sse {
    pushpull_testkit::conformance!(crate::harness(|url| Ok(std::sync::Arc::new(
        pushpull::sse::SseClient::new(pushpull::sse::ClientConfig::new(url))?
    ))));
}

mod over_ws {
    pushpull_testkit::conformance!(crate::harness(|url| Ok(std::sync::Arc::new(
        pushpull::ws::WsClient::new(pushpull::ws::ClientConfig::new(url))?
    ))));
}

mod over_longpoll {
    pushpull_testkit::conformance!(crate::harness(|url| Ok(std::sync::Arc::new(
        pushpull::longpoll::LongpollClient::new(pushpull::longpoll::ClientConfig::new(url))?
    ))));
}

#[tokio::test]
async fn a_registered_broker_is_opened_by_kind_and_its_keys_are_checked() {
    let registry = registry();
    let config = ServerConfig::from_toml_with(
        "listen = \"127.0.0.1:0\"\n[broker]\nkind = \"ledger\"\nkeep = 5\n",
        &registry,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let broker = registry.broker(&config).unwrap();
    let server = registry.serve_with(listener, broker.clone(), &config).unwrap();
    let before = ENTRIES.load(Ordering::Relaxed);
    let client = pushpull::connect(&pushpull::ClientConfig::new(
        "poll",
        format!("http://{}", server.local_addr()),
    ))
    .await
    .unwrap();
    let topic = Topic::new("ledger.entries").unwrap();
    client.publish(&topic, Publication::new("one")).await.unwrap();
    assert!(ENTRIES.load(Ordering::Relaxed) > before, "the ledger did not serve the publish");
    server.shutdown().await;

    // Its own keys are checked by its own rules, named under [broker].
    let error = ServerConfig::from_toml_with("[broker]\nkind = \"ledger\"\nkepp = 5\n", &registry)
        .unwrap_err();
    assert!(error.message().contains("broker.kepp"), "{error}");
    let error = ServerConfig::from_toml_with("[broker]\nkind = \"ledger\"\nkeep = 0\n", &registry)
        .unwrap_err();
    assert!(error.message().contains("broker.keep"), "{error}");
    // Without registering it, the kind is unknown, and the known ones are named.
    let error = ServerConfig::from_toml("[broker]\nkind = \"ledger\"\n").unwrap_err();
    assert!(error.message().contains("broker.kind"), "{error}");
    assert!(error.message().contains("memory"), "{error}");
}
