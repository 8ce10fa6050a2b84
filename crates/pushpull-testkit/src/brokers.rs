//! The brokers a transport's conformance suite serves from, as a value: a transport's harness
//! runs over the memory broker, Redis, or a broker of the application's own, by taking another
//! [`BrokerHarness`] (`HttpHarness::over`), with no code per broker in the transport's tests.

use std::sync::Arc;

use async_trait::async_trait;
use pushpull_core::{Broker, Error, MemoryBroker};

use crate::Limits;

/// Counts the subscriptions a broker serves now.
pub type SubscriptionCount = Box<dyn Fn() -> usize + Send + Sync>;

/// A broker as one server start opens it.
pub struct OpenedBroker {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// Counts the subscriptions it serves now, when it can tell (the suite checks that a
    /// dropped subscription releases what the server held; without a count, that case is
    /// skipped).
    pub subscriptions: Option<SubscriptionCount>,
}

impl std::fmt::Debug for OpenedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedBroker")
            .field("broker", &self.broker.capabilities().name)
            .finish_non_exhaustive()
    }
}

/// Makes the brokers a fixture's servers run on.
#[async_trait]
pub trait BrokerHarness: Send + Sync + 'static {
    /// A fresh store for one fixture (a redis-server of its own, say), on which every start of
    /// the fixture's server opens a broker.
    async fn store(&self) -> Result<Box<dyn BrokerStore>, Error>;
}

/// What one fixture's brokers keep their logs in.
#[async_trait]
pub trait BrokerStore: Send + Sync {
    /// A broker on this store honouring `limits`, as one start of the server opens it.
    fn open(&self, limits: &Limits) -> Result<OpenedBroker, Error>;

    /// Loses what a server restart loses beyond the broker's own memory (a Redis without
    /// persistence: everything). Called before the restarted server opens its broker.
    async fn restart(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Memory brokers: each server start opens a new one, so a restart loses the logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBrokers;

#[async_trait]
impl BrokerHarness for MemoryBrokers {
    async fn store(&self) -> Result<Box<dyn BrokerStore>, Error> {
        Ok(Box::new(MemoryBrokers))
    }
}

#[async_trait]
impl BrokerStore for MemoryBrokers {
    fn open(&self, limits: &Limits) -> Result<OpenedBroker, Error> {
        let broker = MemoryBroker::with_config(crate::memory_config(limits))?;
        let counted = broker.clone();
        Ok(OpenedBroker {
            broker: Arc::new(broker),
            subscriptions: Some(Box::new(move || counted.subscriber_count())),
        })
    }
}
