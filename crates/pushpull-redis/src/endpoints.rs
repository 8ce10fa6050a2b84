//! Webhook endpoints in Redis: registrations every node sees and that survive restarts, each
//! delivered by one node at a time under a lease.
//!
//! Keys: a set of ids (`PREFIX webhooks`), a hash per endpoint (`PREFIX webhook:ID`: `record`,
//! `secrets`, `status`, `progress`, each written by its own writer), and a lease per endpoint
//! (`PREFIX webhook:ID:lease`, the holder's name, expiring).

use std::time::Duration;

use async_trait::async_trait;
use pushpull_core::{Error, ErrorKind};
use pushpull_webhook::{EndpointRecord, EndpointStore, Progress};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::NAME;

/// The part of a record nobody changes after registration.
#[derive(Serialize, Deserialize)]
struct Fixed {
    id: String,
    url: String,
    topics: Vec<String>,
}

/// [`EndpointStore`] on the broker's Redis. Made by
/// [`RedisBroker::endpoint_store`](crate::RedisBroker::endpoint_store).
#[derive(Clone)]
pub struct RedisEndpointStore {
    connection: ConnectionManager,
    prefix: String,
    lease: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for RedisEndpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpointStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn backend(error: redis::RedisError) -> Error {
    Error::new(ErrorKind::Backend, format!("redis: {error}"))
        .with_transport(NAME)
        .with_source(error)
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("a stored webhook endpoint's {what} is unreadable: {error}"),
    )
    .with_transport(NAME)
}

impl RedisEndpointStore {
    /// A store on the Redis `config` names, on a connection of its own (connected lazily).
    pub fn open(config: &crate::RedisConfig) -> Result<Self, Error> {
        let client = config.client()?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.response_timeout));
        let connection = client.get_connection_manager_lazy(manager).map_err(backend)?;
        Ok(Self::new(connection, &config.key_prefix))
    }

    pub(crate) fn new(connection: ConnectionManager, prefix: &str) -> Self {
        Self {
            connection,
            prefix: prefix.to_owned(),
            // Take the lease if free, renew it if ours; 1 when we hold it afterwards.
            lease: redis::Script::new(
                r"
                local holder = redis.call('GET', KEYS[1])
                if not holder then
                  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                  return 1
                elseif holder == ARGV[1] then
                  redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  return 1
                end
                return 0",
            ),
            release: redis::Script::new(
                r"
                if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                return 0",
            ),
        }
    }

    fn ids(&self) -> String {
        format!("{}webhooks", self.prefix)
    }

    fn hash(&self, id: &str) -> String {
        format!("{}webhook:{id}", self.prefix)
    }

    fn lease_key(&self, id: &str) -> String {
        format!("{}webhook:{id}:lease", self.prefix)
    }

    async fn set_field(&self, id: &str, field: &str, value: String) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        // Only an endpoint that still exists is updated (a late write must not revive it).
        let exists: bool = connection.sismember(self.ids(), id).await.map_err(backend)?;
        if exists {
            let () = connection.hset(self.hash(id), field, value).await.map_err(backend)?;
        }
        Ok(())
    }
}

#[async_trait]
impl EndpointStore for RedisEndpointStore {
    async fn insert(&self, record: &EndpointRecord) -> Result<(), Error> {
        let fixed =
            Fixed { id: record.id.clone(), url: record.url.clone(), topics: record.topics.clone() };
        let fields = [
            ("record", serde_json::to_string(&fixed).expect("encodes")),
            ("secrets", serde_json::to_string(&record.secrets).expect("encodes")),
            ("status", record.status.clone()),
            ("progress", serde_json::to_string(&record.progress).expect("encodes")),
        ];
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .hset_multiple(self.hash(&record.id), &fields)
            .sadd(self.ids(), &record.id)
            .query_async::<()>(&mut connection)
            .await
            .map_err(backend)
    }

    async fn all(&self) -> Result<Vec<EndpointRecord>, Error> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection.smembers(self.ids()).await.map_err(backend)?;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            // One removed meanwhile is passed over.
            records.extend(self.get(&id).await?);
        }
        Ok(records)
    }

    async fn get(&self, id: &str) -> Result<Option<EndpointRecord>, Error> {
        let mut connection = self.connection.clone();
        let fields: std::collections::HashMap<String, String> =
            connection.hgetall(self.hash(id)).await.map_err(backend)?;
        let (Some(fixed), Some(secrets), Some(status), Some(progress)) = (
            fields.get("record"),
            fields.get("secrets"),
            fields.get("status"),
            fields.get("progress"),
        ) else {
            return Ok(None);
        };
        let fixed: Fixed = serde_json::from_str(fixed).map_err(|e| corrupt("record", e))?;
        let secrets: Vec<String> =
            serde_json::from_str(secrets).map_err(|e| corrupt("secrets", e))?;
        let progress: Progress =
            serde_json::from_str(progress).map_err(|e| corrupt("progress", e))?;
        Ok(Some(EndpointRecord {
            id: fixed.id,
            url: fixed.url,
            topics: fixed.topics,
            secrets,
            status: status.clone(),
            progress,
        }))
    }

    async fn remove(&self, id: &str) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let (removed,): (u64,) = redis::pipe()
            .atomic()
            .srem(self.ids(), id)
            .del(self.hash(id))
            .ignore()
            .del(self.lease_key(id))
            .ignore()
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(removed > 0)
    }

    async fn set_secrets(&self, id: &str, secrets: &[String]) -> Result<(), Error> {
        self.set_field(id, "secrets", serde_json::to_string(secrets).expect("encodes")).await
    }

    async fn set_status(&self, id: &str, status: &str) -> Result<(), Error> {
        self.set_field(id, "status", status.to_owned()).await
    }

    async fn set_progress(&self, id: &str, progress: &Progress) -> Result<(), Error> {
        self.set_field(id, "progress", serde_json::to_string(progress).expect("encodes")).await
    }

    async fn lease(&self, id: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let held: i64 = self
            .lease
            .key(self.lease_key(id))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(held == 1)
    }

    async fn holder(&self, id: &str) -> Result<Option<String>, Error> {
        let mut connection = self.connection.clone();
        connection.get(self.lease_key(id)).await.map_err(backend)
    }

    async fn release(&self, id: &str, holder: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .release
            .key(self.lease_key(id))
            .arg(holder)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
