//! Where endpoint registrations and their delivery progress live: in this process (the default),
//! or in the broker's shared state, which every node of a deployment sees (Redis's), so registrations
//! survive restarts and exactly one node at a time delivers each endpoint, under a lease.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pushpull_core::{Cursor, Error, SharedState};
use serde::{Deserialize, Serialize};

use super::api::DeadMessage;

/// One endpoint as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Its id.
    pub id: String,
    /// Where it is delivered.
    pub url: String,
    /// The topics it follows.
    pub topics: Vec<String>,
    /// Its signing secrets (`whsec_…`), oldest first.
    pub secrets: Vec<String>,
    /// `active`, `paused` or `disabled`.
    pub status: String,
    /// How far delivery got.
    pub progress: Progress,
}

/// How far an endpoint's delivery got: what the delivering node writes after every message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Where each topic's delivery stands: after the last message delivered (or skipped).
    pub cursors: BTreeMap<String, Cursor>,
    /// Messages delivered.
    pub delivered: u64,
    /// Failed attempts in a row.
    pub failures: u64,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// Messages that used up their attempts (the newest last).
    pub dead: Vec<DeadMessage>,
}

/// Storage of endpoints, shared by the nodes of a deployment.
///
/// Each part of a record has its own writer, so that nothing overwrites another's change: the
/// API writes `secrets` and `status` (resume), the delivering node writes `progress` and
/// `status` (paused, disabled). A lease names the one node that delivers an endpoint.
#[async_trait]
pub trait EndpointStore: Send + Sync + 'static {
    /// Stores a new endpoint.
    async fn insert(&self, record: &EndpointRecord) -> Result<(), Error>;
    /// Every endpoint.
    async fn all(&self) -> Result<Vec<EndpointRecord>, Error>;
    /// One endpoint.
    async fn get(&self, id: &str) -> Result<Option<EndpointRecord>, Error>;
    /// Forgets an endpoint; false if there was none.
    async fn remove(&self, id: &str) -> Result<bool, Error>;
    /// Replaces an endpoint's secrets.
    async fn set_secrets(&self, id: &str, secrets: &[String]) -> Result<(), Error>;
    /// Replaces an endpoint's status.
    async fn set_status(&self, id: &str, status: &str) -> Result<(), Error>;
    /// Replaces an endpoint's progress.
    async fn set_progress(&self, id: &str, progress: &Progress) -> Result<(), Error>;
    /// Takes the lease on delivering `id` for `holder`, or renews it when `holder` has it, for
    /// `ttl`: true when `holder` has it now.
    async fn lease(&self, id: &str, holder: &str, ttl: Duration) -> Result<bool, Error>;
    /// Who holds the lease on `id`, if anyone.
    async fn holder(&self, id: &str) -> Result<Option<String>, Error>;
    /// Gives up the lease on `id` if `holder` has it.
    async fn release(&self, id: &str, holder: &str) -> Result<(), Error>;
}

/// Endpoints kept in this process: gone with it, and seen by no other node.
#[derive(Debug, Default)]
pub struct MemoryEndpointStore {
    records: Mutex<BTreeMap<String, EndpointRecord>>,
    leases: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryEndpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut EndpointRecord)) {
        if let Some(record) = self.records.lock().expect("records lock").get_mut(id) {
            change(record);
        }
    }
}

#[async_trait]
impl EndpointStore for MemoryEndpointStore {
    async fn insert(&self, record: &EndpointRecord) -> Result<(), Error> {
        self.records.lock().expect("records lock").insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn all(&self) -> Result<Vec<EndpointRecord>, Error> {
        Ok(self.records.lock().expect("records lock").values().cloned().collect())
    }

    async fn get(&self, id: &str) -> Result<Option<EndpointRecord>, Error> {
        Ok(self.records.lock().expect("records lock").get(id).cloned())
    }

    async fn remove(&self, id: &str) -> Result<bool, Error> {
        self.leases.lock().expect("leases lock").remove(id);
        Ok(self.records.lock().expect("records lock").remove(id).is_some())
    }

    async fn set_secrets(&self, id: &str, secrets: &[String]) -> Result<(), Error> {
        self.update(id, |record| record.secrets = secrets.to_vec());
        Ok(())
    }

    async fn set_status(&self, id: &str, status: &str) -> Result<(), Error> {
        self.update(id, |record| record.status = status.to_owned());
        Ok(())
    }

    async fn set_progress(&self, id: &str, progress: &Progress) -> Result<(), Error> {
        self.update(id, |record| record.progress = progress.clone());
        Ok(())
    }

    async fn lease(&self, id: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let mut leases = self.leases.lock().expect("leases lock");
        let now = Instant::now();
        match leases.get(id) {
            Some((owner, until)) if owner != holder && *until > now => Ok(false),
            _ => {
                leases.insert(id.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn holder(&self, id: &str) -> Result<Option<String>, Error> {
        let leases = self.leases.lock().expect("leases lock");
        Ok(leases.get(id).filter(|(_, until)| *until > Instant::now()).map(|(h, _)| h.clone()))
    }

    async fn release(&self, id: &str, holder: &str) -> Result<(), Error> {
        let mut leases = self.leases.lock().expect("leases lock");
        if leases.get(id).is_some_and(|(owner, _)| owner == holder) {
            leases.remove(id);
        }
        Ok(())
    }
}

/// Endpoints in a broker's [`SharedState`] (the Redis broker's, say): every node sees them and
/// they outlive the process. A record's parts are fields of their own, each written by its
/// own writer.
#[derive(Clone)]
pub struct SharedEndpointStore {
    state: Arc<dyn SharedState>,
}

impl std::fmt::Debug for SharedEndpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEndpointStore").finish_non_exhaustive()
    }
}

/// The collection endpoints are kept in.
const COLLECTION: &str = "webhook";

/// The part of a record nobody changes after registration.
#[derive(Serialize, Deserialize)]
struct Fixed {
    id: String,
    url: String,
    topics: Vec<String>,
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> Error {
    Error::new(
        pushpull_core::ErrorKind::Backend,
        format!("a stored webhook endpoint's {what} is unreadable: {error}"),
    )
    .with_transport(crate::NAME)
}

impl SharedEndpointStore {
    /// Endpoints kept in `state`.
    pub fn new(state: Arc<dyn SharedState>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl EndpointStore for SharedEndpointStore {
    async fn insert(&self, record: &EndpointRecord) -> Result<(), Error> {
        let fixed =
            Fixed { id: record.id.clone(), url: record.url.clone(), topics: record.topics.clone() };
        let fields = [
            ("record", serde_json::to_string(&fixed).expect("encodes")),
            ("secrets", serde_json::to_string(&record.secrets).expect("encodes")),
            ("status", record.status.clone()),
            ("progress", serde_json::to_string(&record.progress).expect("encodes")),
        ];
        self.state.insert(COLLECTION, &record.id, &fields).await
    }

    async fn all(&self) -> Result<Vec<EndpointRecord>, Error> {
        let ids = self.state.ids(COLLECTION).await?;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            // One removed meanwhile is passed over.
            records.extend(self.get(&id).await?);
        }
        Ok(records)
    }

    async fn get(&self, id: &str) -> Result<Option<EndpointRecord>, Error> {
        let fields = self.state.fields(COLLECTION, id).await?;
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
        self.state.remove(COLLECTION, id).await
    }

    async fn set_secrets(&self, id: &str, secrets: &[String]) -> Result<(), Error> {
        let secrets = serde_json::to_string(secrets).expect("encodes");
        self.state.set_field(COLLECTION, id, "secrets", secrets).await
    }

    async fn set_status(&self, id: &str, status: &str) -> Result<(), Error> {
        self.state.set_field(COLLECTION, id, "status", status.to_owned()).await
    }

    async fn set_progress(&self, id: &str, progress: &Progress) -> Result<(), Error> {
        let progress = serde_json::to_string(progress).expect("encodes");
        self.state.set_field(COLLECTION, id, "progress", progress).await
    }

    async fn lease(&self, id: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.state.lease(COLLECTION, id, holder, ttl).await
    }

    async fn holder(&self, id: &str) -> Result<Option<String>, Error> {
        self.state.holder(COLLECTION, id).await
    }

    async fn release(&self, id: &str, holder: &str) -> Result<(), Error> {
        self.state.release(COLLECTION, id, holder).await
    }
}
