//! The broker's way to Redis: one server, or a Redis Cluster.
//!
//! Every command the broker sends names keys of one slot (a topic's keys share its hash tag),
//! so the same scripts run on either; on a cluster, redis-rs's cluster client routes each to
//! the master of its slot and follows `MOVED` and `ASK` while slots move.

use std::sync::Arc;
use std::time::Duration;

use pushpull_core::{Error, ErrorKind};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::config::RedisConfig;

/// A connection to one Redis or to a cluster: cheap to clone, connected lazily, reconnecting
/// by itself.
#[derive(Clone)]
pub(crate) enum Link {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use (and made again on the next use after it failed).
pub(crate) struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    pub(crate) fn new(client: ClusterClient) -> Self {
        Self { client, connection: OnceCell::new() }
    }

    pub(crate) async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.connection.get_or_try_init(|| self.client.get_async_connection()).await.cloned()
    }
}

fn config_error(config: &RedisConfig, error: redis::RedisError) -> Error {
    let what = if config.cluster.is_empty() { "url" } else { "cluster" };
    Error::new(ErrorKind::Config, format!("{what}: {error}"))
}

impl Link {
    /// The broker's command connection for `config`.
    pub(crate) fn open(config: &RedisConfig) -> Result<Self, Error> {
        if config.cluster.is_empty() {
            let client = config.client()?;
            // No command waits on Redis longer than the response timeout (redis-rs's default
            // of 500 ms is too short for a busy Redis, none at all would hang).
            let manager = ConnectionManagerConfig::new()
                .set_response_timeout(Some(config.response_timeout))
                .set_connection_timeout(Some(config.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let connection =
                client.get_connection_manager_lazy(manager).map_err(|e| config_error(config, e))?;
            return Ok(Self::Single(connection));
        }
        let client = config
            .cluster_client(redis::ProtocolVersion::RESP2)?
            .build()
            .map_err(|e| config_error(config, e))?;
        Ok(Self::Cluster(Arc::new(LazyCluster::new(client))))
    }

    /// The address (`host:port`) of every master, for commands each master answers for its
    /// own keys (`SCAN`); one entry, empty, for a single Redis.
    pub(crate) async fn masters(&self) -> redis::RedisResult<Vec<String>> {
        let Self::Cluster(cluster) = self else { return Ok(vec![String::new()]) };
        let mut connection = cluster.get().await?;
        let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut connection).await?;
        Ok(masters_of(&slots))
    }

    /// Runs `command` on the master at `address` (one of [`masters`](Self::masters)).
    pub(crate) async fn on_master<T: redis::FromRedisValue>(
        &self,
        address: &str,
        command: redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(connection) => command.query_async(&mut connection.clone()).await,
            Self::Cluster(cluster) => {
                let (host, port) = address.rsplit_once(':').unwrap_or((address, "6379"));
                let route = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port: port.parse().unwrap_or(6379),
                    },
                );
                let value = cluster.get().await?.route_command(command, route).await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

/// The masters' addresses in a `CLUSTER SLOTS` answer: entries of first slot, last slot, the
/// master (`[host, port, id, …]`) and its replicas.
pub(crate) fn masters_of(slots: &Value) -> Vec<String> {
    let Value::Array(entries) = slots else { return Vec::new() };
    let mut masters: Vec<String> = entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let Value::Array(master) = parts.get(2)? else { return None };
            let host = match master.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else { return None };
            Some(format!("{host}:{port}"))
        })
        .collect();
    masters.sort();
    masters.dedup();
    masters
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(async move {
                let mut connection = cluster.get().await?;
                connection.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => Box::pin(async move {
                let mut connection = cluster.get().await?;
                connection.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}
