//! Presence in Redis: each topic's members in a hash beside its presence log, every member
//! under a lease that its node renews. A node that stops renewing (it died, or lost Redis) has
//! its members removed, each with a leave on the presence log, by whichever node sweeps first
//! once their leases lapse: within [`RedisConfig::presence_lease`](crate::RedisConfig) plus
//! a sweep interval.

use std::collections::HashMap;
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
    sweep: redis::Script,
    snapshot: redis::Script,
    /// This node's members held for as long as their connections: topic → client → member's
    /// JSON. Renewed every third of the lease (and joined again if Redis lost them).
    held: Mutex<HashMap<Topic, HashMap<String, String>>>,
}

impl NodePresence {
    pub(crate) fn new() -> Self {
        let [join, leave, sweep, snapshot] = crate::scripts::presence();
        Self { join, leave, sweep, snapshot, held: Mutex::default() }
    }
}

impl RedisBroker {
    /// The keys of `topic`'s presence: its members' hash, its presence log's three, and the
    /// leases of every member.
    fn presence_keys(&self, topic: &Topic) -> Vec<String> {
        let presence = topic.presence();
        let prefix = &self.inner.config.key_prefix;
        let mut keys = vec![format!("{prefix}{{{presence}}}:members")];
        keys.extend(self.keys(&presence));
        keys.push(self.leases_key());
        keys
    }

    fn leases_key(&self) -> String {
        format!("{}presence:leases", self.inner.config.key_prefix)
    }

    /// The arguments every presence script that appends takes first: the epoch candidate, now,
    /// the presence log's retention and wake-up.
    fn append_args(&self, invocation: &mut redis::ScriptInvocation<'_>, presence: &Topic) {
        let retention = self.retention_of(presence);
        invocation
            .arg(Epoch::random().to_string())
            .arg(millis_since_unix_epoch(SystemTime::now()))
            .arg(retention.max_messages)
            .arg(retention.max_bytes)
            .arg(max_age_millis(&retention))
            .arg(format!("{}wake", self.inner.config.key_prefix));
    }

    /// Joins (or renews) `entries` (client, member JSON, lease end in ms) of `topic`; how many
    /// were refused because the topic had `max_members`.
    async fn join_entries(
        &self,
        topic: &Topic,
        entries: &[(&str, &str, u64)],
        max_members: usize,
    ) -> Result<u64, Error> {
        let presence = topic.presence();
        let mut invocation = self.inner.presence.join.prepare_invoke();
        for key in self.presence_keys(topic) {
            invocation.key(key);
        }
        self.append_args(&mut invocation, &presence);
        invocation.arg(presence.as_str()).arg(topic.as_str()).arg(max_members);
        for (client, json, lease) in entries {
            invocation.arg(*client).arg(*json).arg(*lease);
        }
        self.invoke(&invocation).await
    }

    /// Ends every lapsed lease, each member with a leave.
    pub(crate) async fn sweep(&self) -> Result<(), Error> {
        loop {
            let mut invocation = self.inner.presence.sweep.prepare_invoke();
            invocation.key(self.leases_key());
            // A lapsed member's topic is known only inside the script: its leave is kept
            // under the broker's retention, not its family's rule.
            let retention = &self.inner.config.retention;
            invocation
                .arg(Epoch::random().to_string())
                .arg(millis_since_unix_epoch(SystemTime::now()))
                .arg(retention.max_messages)
                .arg(retention.max_bytes)
                .arg(max_age_millis(retention))
                .arg(format!("{}wake", self.inner.config.key_prefix))
                .arg(self.inner.config.key_prefix.as_str());
            let ended: u64 = self.invoke(&invocation).await?;
            if ended < SWEEP_BATCH {
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
        // Lapsed members leave first, so the snapshot holds only live ones.
        self.sweep().await?;
        let mut invocation = self.inner.presence.snapshot.prepare_invoke();
        for key in self.presence_keys(topic).into_iter().take(4) {
            invocation.key(key);
        }
        invocation.arg(Epoch::random().to_string());
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
        let presence = topic.presence();
        let mut invocation = self.inner.presence.leave.prepare_invoke();
        for key in self.presence_keys(topic) {
            invocation.key(key);
        }
        self.append_args(&mut invocation, &presence);
        invocation.arg(presence.as_str()).arg(topic.as_str()).arg(client);
        let _: u64 = self.invoke(&invocation).await?;
        Ok(())
    }
}
