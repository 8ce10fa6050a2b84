//! State shared by every node on one Redis, beside the logs: records every node sees and that
//! survive restarts, each worked on by one node at a time under a lease.
//!
//! Keys, for a collection `C`: a set of ids (`PREFIX{C}s`), a hash per record (`PREFIX{C}:ID`,
//! each field written by its own writer), and a lease per record (`PREFIX{C}:ID:lease`, the
//! holder's name, expiring). A collection's keys share its hash tag, so on a Redis Cluster
//! they live in one slot and each change stays one atomic step.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use pushpull_core::{Error, ErrorKind, SharedState};
use redis::AsyncCommands;

use crate::link::Link;

/// [`SharedState`] on the broker's Redis: what [`RedisBroker`](crate::RedisBroker) gives the
/// transports (webhook endpoints every node sees).
#[derive(Clone)]
pub struct RedisSharedState {
    connection: Link,
    prefix: String,
    lease: redis::Script,
    release: redis::Script,
    insert: redis::Script,
    remove: redis::Script,
    read: redis::Script,
}

impl std::fmt::Debug for RedisSharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSharedState").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn backend(error: redis::RedisError) -> Error {
    crate::broker::backend(error)
}

impl RedisSharedState {
    /// The state on the Redis `config` names, on a connection of its own (connected lazily).
    pub fn open(config: &crate::RedisConfig) -> Result<Self, Error> {
        Ok(Self::new(Link::open(config)?, &config.key_prefix))
    }

    pub(crate) fn new(connection: Link, prefix: &str) -> Self {
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
            // Scripts rather than MULTI: a cluster client follows a moved slot for a script,
            // not inside a transaction. KEYS: ids, record (, lease).
            insert: redis::Script::new(
                r"
                redis.call('HSET', KEYS[2], unpack(ARGV, 2))
                redis.call('SADD', KEYS[1], ARGV[1])
                return 0",
            ),
            // A read answered by a replica could be stale, or empty while it syncs: read on
            // the master (see the broker's scripts). KEYS: what to read; ARGV: the command.
            read: redis::Script::new(
                r"
                if string.find(redis.call('INFO', 'replication'), 'role:slave', 1, true) then
                  error({err = 'READONLY this node is a replica now'})
                end
                return redis.call(ARGV[1], KEYS[1])",
            ),
            remove: redis::Script::new(
                r"
                local removed = redis.call('SREM', KEYS[1], ARGV[1])
                redis.call('DEL', KEYS[2], KEYS[3])
                return removed",
            ),
        }
    }

    /// `command KEY`, on the key's master (a replica answers READONLY, and the cluster
    /// connection is made again with a fresh map), once more after such an answer.
    async fn read_on_master<T: redis::FromRedisValue>(
        &self,
        command: &str,
        key: String,
    ) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            let mut connection = self.connection.clone();
            let read = self.read.key(&key).arg(command).invoke_async(&mut connection).await;
            match read {
                Err(error)
                    if attempt == 0
                        && error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) =>
                {
                    attempt += 1;
                }
                other => return other.map_err(backend),
            }
        }
    }

    fn ids_key(&self, collection: &str) -> String {
        format!("{}{{{collection}}}s", self.prefix)
    }

    fn hash(&self, collection: &str, id: &str) -> String {
        format!("{}{{{collection}}}:{id}", self.prefix)
    }

    fn lease_key(&self, collection: &str, id: &str) -> String {
        format!("{}{{{collection}}}:{id}:lease", self.prefix)
    }
}

#[async_trait]
impl SharedState for RedisSharedState {
    async fn insert(
        &self,
        collection: &str,
        id: &str,
        fields: &[(&str, String)],
    ) -> Result<(), Error> {
        if fields.is_empty() {
            return Err(Error::new(ErrorKind::Backend, "a record needs a field"));
        }
        let mut connection = self.connection.clone();
        let mut insert = self.insert.prepare_invoke();
        insert.key(self.ids_key(collection)).key(self.hash(collection, id)).arg(id);
        for (name, value) in fields {
            insert.arg(*name).arg(value);
        }
        let _: i64 = insert.invoke_async(&mut connection).await.map_err(backend)?;
        Ok(())
    }

    async fn ids(&self, collection: &str) -> Result<Vec<String>, Error> {
        self.read_on_master("SMEMBERS", self.ids_key(collection)).await
    }

    async fn fields(&self, collection: &str, id: &str) -> Result<HashMap<String, String>, Error> {
        self.read_on_master("HGETALL", self.hash(collection, id)).await
    }

    async fn set_field(
        &self,
        collection: &str,
        id: &str,
        field: &str,
        value: String,
    ) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        // Only a record that still exists is updated (a late write must not revive it).
        let exists: bool =
            connection.sismember(self.ids_key(collection), id).await.map_err(backend)?;
        if exists {
            let () =
                connection.hset(self.hash(collection, id), field, value).await.map_err(backend)?;
        }
        Ok(())
    }

    async fn remove(&self, collection: &str, id: &str) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let removed: u64 = self
            .remove
            .key(self.ids_key(collection))
            .key(self.hash(collection, id))
            .key(self.lease_key(collection, id))
            .arg(id)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(removed > 0)
    }

    async fn lease(
        &self,
        collection: &str,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let held: i64 = self
            .lease
            .key(self.lease_key(collection, id))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(held == 1)
    }

    async fn holder(&self, collection: &str, id: &str) -> Result<Option<String>, Error> {
        self.read_on_master("GET", self.lease_key(collection, id)).await
    }

    async fn release(&self, collection: &str, id: &str, holder: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .release
            .key(self.lease_key(collection, id))
            .arg(holder)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
