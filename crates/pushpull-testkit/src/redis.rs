//! The conformance harness of [`RedisBroker`]: a real redis-server per case.

use std::sync::Arc;

use async_trait::async_trait;
pub use pushpull_chaos::RedisServer;
use pushpull_core::{Client, Error};
use pushpull_redis::{RedisBroker, RedisConfig};

use crate::{Fixture, Harness, Limits, Skip};

/// Runs the suite against [`RedisBroker`] on a real `redis-server` of each case's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisHarness;

/// A broker config that honours `limits`.
pub fn redis_config(url: String, limits: &Limits) -> RedisConfig {
    let memory = crate::memory_config(limits);
    let mut config = RedisConfig::new(url);
    config.retention = memory.retention;
    config.max_payload = memory.max_payload;
    config
}

#[async_trait]
impl Harness for RedisHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let server = RedisServer::start()?;
        let broker = RedisBroker::new(redis_config(server.url(), &limits))?;
        Ok(Box::new(RedisFixture { server, broker }))
    }
}

struct RedisFixture {
    server: RedisServer,
    broker: RedisBroker,
}

#[async_trait]
impl Fixture for RedisFixture {
    fn client(&self) -> Arc<dyn Client> {
        Arc::new(self.broker.clone())
    }

    async fn sever(&self) -> Result<(), Skip> {
        // Every connection but this one: the broker's commands and its pub/sub.
        for kind in ["normal", "pubsub"] {
            self.server
                .command(&["CLIENT", "KILL", "TYPE", kind])
                .await
                .map_err(|e| Skip(format!("cannot kill redis connections: {e}")))?;
        }
        Ok(())
    }

    async fn restart(&self) -> Result<(), Skip> {
        // Redis loses everything, as a restart without persistence would.
        self.server.command(&["FLUSHALL"]).await.map_err(|e| Skip(e.to_string()))?;
        Ok(())
    }

    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        Ok(self.broker.subscriber_count())
    }
}

/// Redis brokers for a transport's harness: each fixture starts a redis-server of its own, and
/// a restart empties it (as a Redis restarted without persistence would).
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisBrokers;

#[async_trait]
impl crate::BrokerHarness for RedisBrokers {
    async fn store(&self) -> Result<Box<dyn crate::BrokerStore>, Error> {
        Ok(Box::new(RedisStore(RedisServer::start()?)))
    }
}

struct RedisStore(RedisServer);

#[async_trait]
impl crate::BrokerStore for RedisStore {
    fn open(&self, limits: &Limits) -> Result<crate::OpenedBroker, Error> {
        let broker = RedisBroker::new(redis_config(self.0.url(), limits))?;
        let counted = broker.clone();
        Ok(crate::OpenedBroker {
            broker: Arc::new(broker),
            subscriptions: Some(Box::new(move || counted.subscriber_count())),
        })
    }

    async fn restart(&self) -> Result<(), Error> {
        self.0.command(&["FLUSHALL"]).await.map(|_| ())
    }
}
