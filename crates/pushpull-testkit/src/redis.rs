//! The conformance harness of [`RedisBroker`]: a real redis-server per case.

use std::sync::Arc;

use async_trait::async_trait;
pub use pushpull_chaos::{RedisCluster, RedisServer};
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

/// The process's shared cluster, started by the first caller (off the async threads).
async fn shared_cluster() -> Result<&'static RedisCluster, Error> {
    tokio::task::spawn_blocking(RedisCluster::shared)
        .await
        .map_err(|e| Error::new(pushpull_core::ErrorKind::Config, e.to_string()))?
}

/// Deletes the keys under `prefix` on the shared cluster (off the async threads).
async fn delete_prefixed(cluster: &'static RedisCluster, prefix: &str) -> Result<(), Error> {
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || cluster.delete_prefixed(&prefix))
        .await
        .map_err(|e| Error::new(pushpull_core::ErrorKind::Config, e.to_string()))?
}

/// A key prefix no other case of this process uses, so cases can share one cluster.
fn unique_prefix() -> String {
    format!("pushpull-{}:", pushpull_core::Epoch::random())
}

/// A broker config on the process's shared Redis Cluster, under a key prefix of its own.
fn cluster_config(cluster: &RedisCluster, prefix: &str, limits: &Limits) -> RedisConfig {
    let mut config = redis_config(String::new(), limits);
    config.cluster = cluster.urls();
    config.key_prefix = prefix.to_owned();
    config
}

/// Runs the suite against [`RedisBroker`] on a real Redis Cluster (three masters, three
/// replicas) shared by the test binary's cases, each under a key prefix of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisClusterHarness;

#[async_trait]
impl Harness for RedisClusterHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let cluster = shared_cluster().await?;
        let prefix = unique_prefix();
        let broker = RedisBroker::new(cluster_config(cluster, &prefix, &limits))?;
        Ok(Box::new(RedisClusterFixture { cluster, prefix, broker }))
    }
}

struct RedisClusterFixture {
    cluster: &'static RedisCluster,
    prefix: String,
    broker: RedisBroker,
}

#[async_trait]
impl Fixture for RedisClusterFixture {
    fn client(&self) -> Arc<dyn Client> {
        Arc::new(self.broker.clone())
    }

    async fn sever(&self) -> Result<(), Skip> {
        Err(Skip(
            "the cluster is shared by the binary's cases: cutting its connections would cut \
             theirs (tests/redis_cluster.rs kills masters under a cluster of its own)"
                .into(),
        ))
    }

    async fn restart(&self) -> Result<(), Skip> {
        // This case's keys go, as a restart without persistence would lose them.
        delete_prefixed(self.cluster, &self.prefix).await.map_err(|e| Skip(e.to_string()))
    }

    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        Ok(self.broker.subscriber_count())
    }
}

/// Redis Cluster brokers for a transport's harness: every fixture on the process's shared
/// cluster under a key prefix of its own; a restart deletes its keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisClusterBrokers;

#[async_trait]
impl crate::BrokerHarness for RedisClusterBrokers {
    async fn store(&self) -> Result<Box<dyn crate::BrokerStore>, Error> {
        let cluster = shared_cluster().await?;
        Ok(Box::new(RedisClusterStore { cluster, prefix: unique_prefix() }))
    }
}

struct RedisClusterStore {
    cluster: &'static RedisCluster,
    prefix: String,
}

#[async_trait]
impl crate::BrokerStore for RedisClusterStore {
    fn open(&self, limits: &Limits) -> Result<crate::OpenedBroker, Error> {
        let broker = RedisBroker::new(cluster_config(self.cluster, &self.prefix, limits))?;
        let counted = broker.clone();
        Ok(crate::OpenedBroker {
            broker: Arc::new(broker),
            subscriptions: Some(Box::new(move || counted.subscriber_count())),
        })
    }

    async fn restart(&self) -> Result<(), Error> {
        delete_prefixed(self.cluster, &self.prefix).await
    }
}
