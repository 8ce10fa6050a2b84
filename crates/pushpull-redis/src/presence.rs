//! Presence in Redis: each topic's members in a hash beside its presence log, every member
//! under a lease that its node renews, all in the presence topic's slot. A node that stops
//! renewing (it died, or lost Redis) has its members removed, each with a leave on the presence
//! log, by whichever node sweeps first once their leases lapse: within
//! [`RedisConfig::presence_lease`](crate::RedisConfig) plus a sweep interval. The sweepers
//! find lapsed leases through one index of every lease (see `scripts::UNLIST`), whose entries
//! are written before a topic's own lease and removed after it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pushpull_core::{
    Cursor, Epoch, Error, Lease, Member, Members, Offset, Presence, PresenceSnapshot,
    PresenceStats, Topic, millis_since_unix_epoch,
};
use redis::Value;

use crate::NAME;
use crate::broker::{Inner, RedisBroker, max_age_millis, protocol};

/// How often each node looks for lapsed leases (and so how late a lapsed member's leave can be).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The most leases one sweep ends; a sweep that ends this many runs again at once.
const SWEEP_BATCH: u64 = 200;

/// The presence scripts and the members this node holds open.
pub(crate) struct NodePresence {
    join: redis::Script,
    leave: redis::Script,
    expire: redis::Script,
    snapshot: redis::Script,
    unlist: redis::Script,
    /// This node's members held for as long as their connections: topic → client → member's
    /// JSON. Renewed every third of the lease (and joined again if Redis lost them).
    held: Mutex<HashMap<Topic, HashMap<String, String>>>,
}

impl NodePresence {
    pub(crate) fn new() -> Self {
        let ([join, leave, expire, snapshot], unlist) = crate::scripts::presence();
        Self { join, leave, expire, snapshot, unlist, held: Mutex::default() }
    }
}

impl RedisBroker {
    /// The index of every lease, by which sweepers find lapsed ones.
    fn leases_index(&self) -> String {
        format!("{}presence:leases", self.inner.config.key_prefix)
    }

    /// A presence script on `topic`'s presence, with its keys (members, the presence log's
    /// three, leases) and first arguments (the epoch candidate, now, the presence log's
    /// retention, its wake channels and name).
    fn presence_invocation<'a>(
        &self,
        script: &'a redis::Script,
        topic: &Topic,
    ) -> redis::ScriptInvocation<'a> {
        let presence = topic.presence();
        let config = &self.inner.config;
        let prefix = &config.key_prefix;
        let mut invocation = script.prepare_invoke();
        invocation.key(format!("{prefix}{{{presence}}}:members"));
        for key in self.keys(&presence) {
            invocation.key(key);
        }
        invocation.key(format!("{prefix}{{{presence}}}:leases"));
        let retention = self.retention_of(&presence);
        invocation
            .arg(Epoch::random().to_string())
            .arg(millis_since_unix_epoch(SystemTime::now()))
            .arg(retention.max_messages)
            .arg(retention.max_bytes)
            .arg(max_age_millis(&retention))
            .arg(crate::wake::channel(prefix, &presence))
            .arg(crate::wake::shared_channel(prefix))
            .arg(presence.as_str());
        invocation
    }

    /// Lists leases in the index (before they are set on their topic, so none is missed).
    async fn list_leases(&self, topic: &Topic, entries: &[(&str, &str, u64)]) -> Result<(), Error> {
        let mut add = redis::cmd("ZADD");
        add.arg(self.leases_index());
        for (client, _, lease) in entries {
            add.arg(*lease).arg(format!("{topic}\n{client}"));
        }
        let mut connection = self.inner.link.clone();
        add.query_async::<u64>(&mut connection).await.map_err(crate::broker::backend)?;
        Ok(())
    }

    /// Joins (or renews) `entries` (client, member JSON, lease end in ms) of `topic`; how many
    /// were refused because the topic had `max_members`.
    async fn join_entries(
        &self,
        topic: &Topic,
        entries: &[(&str, &str, u64)],
        max_members: usize,
    ) -> Result<u64, Error> {
        self.list_leases(topic, entries).await?;
        let mut invocation = self.presence_invocation(&self.inner.presence.join, topic);
        invocation.arg(max_members);
        for (client, json, lease) in entries {
            invocation.arg(*client).arg(*json).arg(*lease);
        }
        self.invoke(&invocation).await
    }

    /// Ends every lapsed lease, each member with a leave: finds them in the index, ends them
    /// on their topics, then takes them off the index (unless renewed meanwhile).
    pub(crate) async fn sweep(&self) -> Result<(), Error> {
        loop {
            let now = millis_since_unix_epoch(SystemTime::now());
            let mut connection = self.inner.link.clone();
            let due: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.leases_index())
                .arg("-inf")
                .arg(now)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH)
                .query_async(&mut connection)
                .await
                .map_err(crate::broker::backend)?;
            let mut expired = HashSet::new();
            for (entry, score) in &due {
                let topic = entry.split_once('\n').and_then(|(topic, _)| Topic::new(topic).ok());
                if let Some(topic) = topic
                    && expired.insert(topic.clone())
                {
                    let invocation = self.presence_invocation(&self.inner.presence.expire, &topic);
                    let _: u64 = self.invoke(&invocation).await?;
                }
                let mut unlist = self.inner.presence.unlist.prepare_invoke();
                unlist.key(self.leases_index()).arg(entry).arg(*score);
                let _: u64 = self.invoke(&unlist).await?;
            }
            if (due.len() as u64) < SWEEP_BATCH {
                return Ok(());
            }
        }
    }

    /// Renews every member this node holds (joining again any Redis lost).
    async fn renew(&self) -> Result<(), Error> {
        let held: Vec<(Topic, Vec<(String, String)>)> = {
            let held = self.inner.presence.held.lock().expect("presence lock");
            held.iter()
                .map(|(topic, members)| {
                    (topic.clone(), members.iter().map(|(c, j)| (c.clone(), j.clone())).collect())
                })
                .collect()
        };
        let end = lease_end(self.inner.config.presence_lease);
        for (topic, members) in held {
            for chunk in members.chunks(500) {
                let entries: Vec<(&str, &str, u64)> = chunk
                    .iter()
                    .map(|(client, json)| (client.as_str(), json.as_str(), end))
                    .collect();
                self.join_entries(&topic, &entries, usize::MAX).await?;
            }
        }
        Ok(())
    }
}

/// When a lease of `length` from now ends, in milliseconds since the Unix epoch.
fn lease_end(length: Duration) -> u64 {
    millis_since_unix_epoch(SystemTime::now() + length)
}

/// Starts this node's presence task: it sweeps lapsed leases every [`SWEEP_EVERY`] and renews
/// the node's members every third of the lease, until the broker is dropped.
pub(crate) fn renew_in_background(broker: &RedisBroker) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let inner: Weak<Inner> = Arc::downgrade(&broker.inner);
    let renew_every = broker.inner.config.presence_lease / 3;
    runtime.spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(inner) = inner.upgrade() else { return };
            let broker = RedisBroker { inner };
            if renewed.elapsed() >= renew_every {
                renewed = Instant::now();
                if let Err(error) = broker.renew().await {
                    tracing::warn!(%error, "this node's presence could not be renewed");
                }
            }
            if let Err(error) = broker.sweep().await {
                tracing::debug!(%error, "lapsed presence leases could not be swept");
            }
        }
    });
}

fn no_presence_of_presence(topic: &Topic) -> Result<(), Error> {
    pushpull_core::check_has_members(topic).map_err(|e| e.with_transport(NAME))
}

#[async_trait]
impl Presence for RedisBroker {
    async fn snapshot(&self, topic: &Topic) -> Result<PresenceSnapshot, Error> {
        no_presence_of_presence(topic)?;
        // Lapsed members leave first (in the script), so the snapshot holds only live ones.
        let invocation = self.presence_invocation(&self.inner.presence.snapshot, topic);
        let answer: Vec<Value> = self.invoke(&invocation).await?;
        let [epoch, last, members] = answer.as_slice() else {
            return Err(protocol("a presence snapshot"));
        };
        let epoch: Epoch = redis::from_redis_value::<String>(epoch.clone())
            .ok()
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| protocol("an epoch"))?;
        let last: u64 = redis::from_redis_value(last.clone()).map_err(|_| protocol("an offset"))?;
        let members: Vec<Vec<u8>> =
            redis::from_redis_value(members.clone()).map_err(|_| protocol("members"))?;
        let members = members
            .iter()
            .map(|json| Member::from_json(json))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.with_transport(NAME))?;
        Ok(PresenceSnapshot::new(topic.clone(), members, Cursor::After(epoch, Offset(last))))
    }

    async fn stats(&self, topic: &Topic) -> Result<PresenceStats, Error> {
        let snapshot = self.snapshot(topic).await?;
        Ok(PresenceStats::of(&snapshot.members))
    }
}

#[async_trait]
impl Members for RedisBroker {
    async fn join(
        &self,
        topic: &Topic,
        member: &Member,
        lease: Lease,
        max_members: usize,
    ) -> Result<(), Error> {
        no_presence_of_presence(topic)?;
        let json = String::from_utf8(member.to_json()).expect("JSON is UTF-8");
        let length = match lease {
            Lease::Held => self.inner.config.presence_lease,
            Lease::For(length) => length,
        };
        let refused = self
            .join_entries(topic, &[(&member.client, &json, lease_end(length))], max_members)
            .await?;
        if refused > 0 {
            return Err(pushpull_core::members_full(topic, max_members).with_transport(NAME));
        }
        if lease == Lease::Held {
            let mut held = self.inner.presence.held.lock().expect("presence lock");
            held.entry(topic.clone()).or_default().insert(member.client.clone(), json);
        }
        Ok(())
    }

    async fn leave(&self, topic: &Topic, client: &str) -> Result<(), Error> {
        {
            let mut held = self.inner.presence.held.lock().expect("presence lock");
            if let Some(members) = held.get_mut(topic) {
                members.remove(client);
                if members.is_empty() {
                    held.remove(topic);
                }
            }
        }
        let mut invocation = self.presence_invocation(&self.inner.presence.leave, topic);
        invocation.arg(client);
        let _: u64 = self.invoke(&invocation).await?;
        // Off the index too (were this lost, a sweep would find the entry lapsed and drop it).
        let mut connection = self.inner.link.clone();
        let _: u64 = redis::cmd("ZREM")
            .arg(self.leases_index())
            .arg(format!("{topic}\n{client}"))
            .query_async(&mut connection)
            .await
            .map_err(crate::broker::backend)?;
        Ok(())
    }
}
