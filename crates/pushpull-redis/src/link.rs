//! The broker's way to Redis: one server, or a Redis Cluster.
//!
//! Every command the broker sends names keys of one slot (a topic's keys share its hash tag),
//! so the same scripts run on either; on a cluster, redis-rs's cluster client routes each to
//! the master of its slot and follows `MOVED` and `ASK` while slots move.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

use pushpull_core::{Error, ErrorKind};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisConfig;

/// A connection to one Redis or to a cluster: cheap to clone, connected lazily, reconnecting
/// by itself.
#[derive(Clone)]
pub(crate) enum Link {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use (and made again on the next use after it failed,
/// or after a master that failed over came back as a replica: see [`LazyCluster::check`]).
///
/// The connection is made by a task of its own, which every command waiting for it awaits:
/// a command that its owner stops polling half-way (a subscriber's read, say) holds up no
/// other, and no lock is held across an await.
pub(crate) struct LazyCluster {
    client: ClusterClient,
    state: Arc<Mutex<Connection>>,
}

enum Connection {
    Unmade,
    Making(Making),
    Made(ClusterConnection),
}

/// A cluster connection being made: its outcome, for every command waiting for it.
type Making = Shared<BoxFuture<'static, redis::RedisResult<ClusterConnection>>>;

impl LazyCluster {
    pub(crate) fn new(client: ClusterClient) -> Self {
        Self { client, state: Arc::new(Mutex::new(Connection::Unmade)) }
    }

    pub(crate) async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let making = {
            let mut state = self.state.lock().expect("cluster connection lock");
            match &*state {
                Connection::Made(connection) => return Ok(connection.clone()),
                Connection::Making(making) => making.clone(),
                Connection::Unmade => {
                    let making = self.make();
                    *state = Connection::Making(making.clone());
                    making
                }
            }
        };
        making.await
    }

    /// Starts making the connection; once made, it is the one every command uses (until
    /// [`check`](Self::check) drops it), and a failure leaves it to the next command to try
    /// again.
    fn make(&self) -> Making {
        let client = self.client.clone();
        let state = Arc::clone(&self.state);
        let task = tokio::spawn(async move {
            let made = client.get_async_connection().await;
            *state.lock().expect("cluster connection lock") = match &made {
                Ok(connection) => Connection::Made(connection.clone()),
                Err(_) => Connection::Unmade,
            };
            made
        });
        async move {
            task.await.unwrap_or_else(|failed| {
                Err(std::io::Error::other(format!("connecting to the cluster failed: {failed}"))
                    .into())
            })
        }
        .boxed()
        .shared()
    }

    /// Looks at a command's outcome: `READONLY` means the client sent a write to a node that
    /// was a slot's master and is now a replica (it failed over and came back), which redis-rs
    /// does not take as a sign that its slot map is stale, as it does `MOVED`. The connection
    /// is then made again, from a fresh map, for the next command.
    fn check<T: ReplyOf>(&self, outcome: redis::RedisResult<T>) -> redis::RedisResult<T> {
        let read_only = match &outcome {
            Err(error) => {
                error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            }
            Ok(reply) => reply.is_read_only(),
        };
        if read_only {
            let mut state = self.state.lock().expect("cluster connection lock");
            if let Connection::Made(_) = &*state {
                tracing::debug!("a write reached a replica: reconnecting to the cluster");
                *state = Connection::Unmade;
            }
        }
        outcome
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

    /// `WAIT`s for `replicas` of the master that holds `key` to have this connection's writes,
    /// at most `timeout`; how many had them.
    pub(crate) async fn wait(
        &self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Self::Single(connection) => wait.query_async(&mut connection.clone()).await,
            Self::Cluster(cluster) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let value = cluster.get().await?.route_command(wait, route).await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
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

/// A reply, or the replies of a pipeline, that may hold a server's error.
trait ReplyOf {
    /// Whether it holds `READONLY`.
    fn is_read_only(&self) -> bool;
}

fn read_only(value: &Value) -> bool {
    matches!(value, Value::ServerError(error)
        if error.kind() == Some(redis::ServerErrorKind::ReadOnly))
}

impl ReplyOf for Value {
    fn is_read_only(&self) -> bool {
        read_only(self)
    }
}

impl ReplyOf for Vec<Value> {
    fn is_read_only(&self) -> bool {
        self.iter().any(read_only)
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(async move {
                let mut connection = cluster.get().await?;
                cluster.check(connection.req_packed_command(cmd).await)
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
                cluster.check(connection.req_packed_commands(pipeline, offset, count).await)
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
