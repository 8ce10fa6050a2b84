//! How a registry opens a broker by name from configuration, and the state a broker shares
//! with the transports beside its logs.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::traits::Broker;

/// A broker a registry opens by name from configuration: `[broker] kind = "NAME"`, with the
/// keys of [`Config`](Self::Config) beside `kind` (the `pushpull` facade registers each with
/// `Registry::register_broker`).
pub trait OpenBroker: 'static {
    /// The broker's name: `kind = "NAME"`.
    const NAME: &'static str;

    /// Its settings, all optional (`#[serde(default)]`), unknown keys refused.
    type Config: Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync;

    /// Checks the settings; an error names the key (`retention.max_messages: …`).
    fn check(config: &Self::Config) -> Result<()>;

    /// Opens it. Called within a tokio runtime (a broker may start background tasks).
    fn open(config: Self::Config) -> Result<Arc<dyn Broker>>;

    /// Opens it with per-topic rules (`[[topics]]`), whose retention it applies to each
    /// topic. The default opens it plainly when there are no rules, and refuses rules it
    /// cannot apply.
    fn open_with_rules(config: Self::Config, rules: crate::TopicRules) -> Result<Arc<dyn Broker>> {
        if rules.is_empty() {
            return Self::open(config);
        }
        Err(crate::Error::new(
            crate::ErrorKind::Config,
            format!("the {} broker does not apply [[topics]] rules", Self::NAME),
        ))
    }

    /// Where it keeps state every node of a deployment sees (webhook endpoints), opened from
    /// its settings; `None` (the default) when a process's own memory is all there is.
    fn shared_state(config: &Self::Config) -> Result<Option<Arc<dyn SharedState>>> {
        let _ = config;
        Ok(None)
    }
}

/// State a broker keeps beside its logs where every node of a deployment sees it: records of
/// named text fields, grouped in collections, and leases that say which node does the work a
/// record asks for. What a transport keeps across nodes (the webhook transport's endpoints)
/// lives here, so a broker serves it without knowing the transport.
///
/// # Contract
///
/// - A record is listed by [`ids`](Self::ids) from [`insert`](Self::insert) until
///   [`remove`](Self::remove), which also forgets its fields and lease.
/// - [`set_field`](Self::set_field) changes a listed record only: a late write never revives a
///   removed one. Fields are written one by one, so two writers of different fields never undo
///   each other.
/// - A lease is held by one holder at a time, until it expires or is released;
///   [`lease`](Self::lease) takes a free one or renews one the holder has.
#[async_trait]
pub trait SharedState: Send + Sync + 'static {
    /// Writes every field of record `id` in `collection` and lists it, at once.
    async fn insert(&self, collection: &str, id: &str, fields: &[(&str, String)]) -> Result<()>;

    /// The ids listed in `collection`.
    async fn ids(&self, collection: &str) -> Result<Vec<String>>;

    /// The fields of record `id` (empty when there is none).
    async fn fields(&self, collection: &str, id: &str) -> Result<HashMap<String, String>>;

    /// Sets one field of a listed record; does nothing for one that is not listed.
    async fn set_field(&self, collection: &str, id: &str, field: &str, value: String)
    -> Result<()>;

    /// Forgets record `id`, its fields and its lease; false if it was not listed.
    async fn remove(&self, collection: &str, id: &str) -> Result<bool>;

    /// Takes the lease on record `id` for `holder`, or renews it when `holder` has it, for
    /// `ttl`: true when `holder` has it now.
    async fn lease(&self, collection: &str, id: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Who holds the lease on record `id`, if anyone.
    async fn holder(&self, collection: &str, id: &str) -> Result<Option<String>>;

    /// Gives up the lease on record `id` if `holder` has it.
    async fn release(&self, collection: &str, id: &str, holder: &str) -> Result<()>;
}

impl OpenBroker for crate::MemoryBroker {
    const NAME: &'static str = crate::memory::NAME;
    type Config = crate::MemoryConfig;

    fn check(config: &crate::MemoryConfig) -> Result<()> {
        config.validate()
    }

    fn open(config: crate::MemoryConfig) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(crate::MemoryBroker::with_config(config)?))
    }

    fn open_with_rules(
        config: crate::MemoryConfig,
        rules: crate::TopicRules,
    ) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(crate::MemoryBroker::with_rules(config, rules)?))
    }
}
