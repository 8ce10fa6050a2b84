//! The harness for the in-process [`MemoryBroker`].

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use pushpull_core::{
    Capabilities, Client, Cursor, Error, Fetch, MemoryBroker, MemoryConfig, Page, Publication,
    Publish, Receipt, Subscribe, Subscription, Topic,
};

use crate::harness::{Fixture, Harness, Limits, Skip};

/// Runs the suite against [`MemoryBroker`] itself, with no network in between.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryHarness;

/// The broker config that honours `limits`, for harnesses that serve a memory broker.
pub fn memory_config(limits: &Limits) -> MemoryConfig {
    let mut config = MemoryConfig::default();
    config.retention.max_messages = limits.retention_messages;
    config.retention.max_bytes = config.retention.max_bytes.max(limits.max_payload * 4);
    config.retention.max_age = None;
    config.max_payload = limits.max_payload;
    config
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let config = memory_config(&limits);
        let broker = MemoryBroker::with_config(config.clone())?;
        Ok(Box::new(MemoryFixture { config, current: Arc::new(RwLock::new(broker)) }))
    }
}

struct MemoryFixture {
    config: MemoryConfig,
    current: Arc<RwLock<MemoryBroker>>,
}

#[async_trait]
impl Fixture for MemoryFixture {
    fn client(&self) -> Arc<dyn Client> {
        Arc::new(CurrentBroker(self.current.clone()))
    }

    async fn sever(&self) -> Result<(), Skip> {
        Err(Skip("the memory broker is in-process: there is no connection to sever".into()))
    }

    async fn restart(&self) -> Result<(), Skip> {
        let fresh = MemoryBroker::with_config(self.config.clone()).expect("config was valid");
        *self.current.write().expect("broker lock") = fresh;
        Ok(())
    }

    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        Ok(self.current.read().expect("broker lock").subscriber_count())
    }
}

/// Calls whichever broker is current, as an application would after a restart.
struct CurrentBroker(Arc<RwLock<MemoryBroker>>);

impl CurrentBroker {
    fn broker(&self) -> MemoryBroker {
        self.0.read().expect("broker lock").clone()
    }
}

#[async_trait]
impl Publish for CurrentBroker {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.broker().publish(topic, publication).await
    }
}

#[async_trait]
impl Fetch for CurrentBroker {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        self.broker().fetch(topic, cursor, limit).await
    }
}

#[async_trait]
impl Subscribe for CurrentBroker {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        self.broker().subscribe(topic, cursor).await
    }

    fn directory(&self) -> Option<Arc<dyn pushpull_core::Directory>> {
        self.broker().directory()
    }
}

impl Client for CurrentBroker {
    fn capabilities(&self) -> Capabilities {
        self.broker().capabilities()
    }
}
