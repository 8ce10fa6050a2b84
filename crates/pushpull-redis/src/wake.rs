//! Wake-ups, sharded by topic: a node subscribes (`SSUBSCRIBE`) to the channel of each topic its
//! readers follow, from the first reader on, and unsubscribes once the last one has gone; so
//! what a node hears grows with what it serves, not with what every node publishes. On a
//! Redis Cluster each topic's channel lives in its slot, on the master that stores the topic.
//! One channel shared by every node carries only each log's first message, which subscriptions
//! by prefix listen for.
//!
//! A wake-up only says "topic T has offset N now"; readers then read the log by cursor, so a
//! lost or late wake-up costs latency, never data (readers also check on a timer). After the
//! subscription connection drops, or a topic's slot moves, the node subscribes again and wakes
//! the readers concerned, in case a wake-up was missed meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pushpull_core::{Error, Listing, Topic};
use redis::aio::ConnectionManagerConfig;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::RedisConfig;
use crate::link::{LazyCluster, Link};

/// The channel of `topic`'s wake-ups: in the topic's slot (its hash tag).
pub(crate) fn channel(prefix: &str, topic: &Topic) -> String {
    format!("{prefix}{{{topic}}}:wake")
}

/// The channel every node hears: each log's first message.
pub(crate) fn shared_channel(prefix: &str) -> String {
    format!("{prefix}wake")
}

/// One followed topic: its readers' signal (a count of wake-ups, which goes only up while
/// anyone reads the topic: the windows that compare with it go with their last reader too),
/// and whether its channel is subscribed yet.
struct Followed {
    sender: watch::Sender<u64>,
    subscribed: watch::Sender<bool>,
}

/// This node's readers' wake-up signals, by topic.
pub(crate) struct Waker {
    prefix: String,
    topics: Mutex<HashMap<Topic, Followed>>,
    /// Every new topic, for subscriptions by prefix (which pick the topics they select that
    /// they do not follow yet); sent to only while someone listens.
    published: broadcast::Sender<Listing>,
    /// Topics whose channel the listener is to subscribe.
    to_subscribe: mpsc::UnboundedSender<Topic>,
    /// How long a new reader waits for its topic's channel to be subscribed.
    patience: Duration,
    /// Wake-ups received on topics' channels, and on the shared one.
    received: AtomicU64,
    received_shared: AtomicU64,
}

impl Waker {
    /// Topics as wake-ups name them.
    pub(crate) fn published(&self) -> broadcast::Receiver<Listing> {
        self.published.subscribe()
    }

    /// A receiver woken when `topic` gets a message (its value counts the wake-ups: a reader
    /// that has seen `n` knows every message announced by then is in Redis),
    /// returned once the topic's channel is subscribed (or, if Redis does not answer, after
    /// the response timeout: readers also check on a timer).
    pub(crate) async fn watch(&self, topic: &Topic) -> watch::Receiver<u64> {
        let (receiver, mut subscribed) = {
            let mut topics = self.topics.lock().expect("waker lock");
            match topics.get(topic) {
                Some(followed) => (followed.sender.subscribe(), followed.subscribed.subscribe()),
                None => {
                    let followed = Followed {
                        sender: watch::Sender::new(0),
                        subscribed: watch::Sender::new(false),
                    };
                    let pair = (followed.sender.subscribe(), followed.subscribed.subscribe());
                    topics.insert(topic.clone(), followed);
                    let _ = self.to_subscribe.send(topic.clone());
                    pair
                }
            }
        };
        let _ = tokio::time::timeout(self.patience, subscribed.wait_for(|done| *done)).await;
        receiver
    }

    /// How many readers are waiting on this node.
    pub(crate) fn readers(&self) -> usize {
        let topics = self.topics.lock().expect("waker lock");
        topics.values().map(|followed| followed.sender.receiver_count()).sum()
    }

    /// Wake-ups this node received: on its topics' channels, and on the shared one.
    pub(crate) fn received(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.received_shared.load(Ordering::Relaxed))
    }

    /// The topic whose channel is `channel`, if it is one.
    fn topic_of(&self, channel: &[u8]) -> Option<Topic> {
        let name = std::str::from_utf8(channel).ok()?;
        let name = name.strip_prefix(self.prefix.as_str())?.strip_prefix('{')?;
        Topic::new(name.strip_suffix("}:wake")?).ok()
    }

    fn wake(&self, topic: &Topic) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(followed) = self.topics.lock().expect("waker lock").get(topic) {
            followed.sender.send_modify(|wakes| *wakes += 1);
        }
    }

    /// A log's first message, from the shared channel.
    fn created(&self, payload: &[u8]) {
        self.received_shared.fetch_add(1, Ordering::Relaxed);
        let Some(topic) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.split(' ').next())
            .and_then(|name| Topic::new(name).ok())
        else {
            return;
        };
        // A presence log is no topic a prefix selects.
        if self.published.receiver_count() > 0 && !topic.is_presence() {
            let _ = self.published.send(Listing::Published(topic));
        }
    }

    /// Wakes the readers of `topics`, or of every topic: wake-ups may have been missed (and,
    /// for every topic, topics created meanwhile, which prefix subscriptions list again).
    fn wake_all(&self, topics: Option<&HashSet<Topic>>) {
        let followed = self.topics.lock().expect("waker lock");
        for (topic, followed) in followed.iter() {
            if topics.is_none_or(|topics| topics.contains(topic)) {
                followed.sender.send_modify(|wakes| *wakes += 1);
            }
        }
        if topics.is_none() && self.published.receiver_count() > 0 {
            let _ = self.published.send(Listing::Relist);
        }
    }

    /// Forgets the topics nobody reads any more; their channels to unsubscribe.
    fn forget_unread(&self) -> Vec<Topic> {
        let mut topics = self.topics.lock().expect("waker lock");
        let unread: Vec<Topic> = topics
            .iter()
            .filter(|(_, followed)| followed.sender.receiver_count() == 0)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in &unread {
            topics.remove(topic);
        }
        unread
    }

    fn mark_subscribed(&self, topic: &Topic) {
        if let Some(followed) = self.topics.lock().expect("waker lock").get(topic) {
            followed.subscribed.send_replace(true);
        }
    }

    fn is_followed(&self, topic: &Topic) -> bool {
        self.topics.lock().expect("waker lock").contains_key(topic)
    }

    fn followed(&self) -> HashSet<Topic> {
        self.topics.lock().expect("waker lock").keys().cloned().collect()
    }
}

/// The listener's connection: RESP3, its pushes (messages, and the library's notice of a
/// dropped connection) sent to the listener.
fn subscriber(
    config: &RedisConfig,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> Result<Link, Error> {
    let bad = |e: redis::RedisError| {
        Error::new(pushpull_core::ErrorKind::Config, format!("redis pub/sub: {e}"))
    };
    if config.cluster.is_empty() {
        let client = config.client_with_protocol(redis::ProtocolVersion::RESP3)?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
            .set_push_sender(pushes);
        let connection = client.get_connection_manager_lazy(manager).map_err(bad)?;
        return Ok(Link::Single(connection));
    }
    let client = config
        .cluster_client(redis::ProtocolVersion::RESP3)?
        .push_sender(pushes)
        .build()
        .map_err(bad)?;
    Ok(Link::Cluster(Arc::new(LazyCluster::new(client))))
}

/// Starts `waker`'s listener: it runs for as long as the waker lives.
pub(crate) fn start(config: &RedisConfig) -> Result<Arc<Waker>, Error> {
    let (to_subscribe, requests) = mpsc::unbounded_channel();
    let (push_sender, pushes) = mpsc::unbounded_channel();
    let link = subscriber(config, push_sender)?;
    let waker = Arc::new(Waker {
        prefix: config.key_prefix.clone(),
        topics: Mutex::default(),
        published: broadcast::Sender::new(1024),
        to_subscribe,
        patience: config.response_timeout,
        received: AtomicU64::new(0),
        received_shared: AtomicU64::new(0),
    });
    let listener = Listener {
        link,
        waker: Arc::downgrade(&waker),
        shared: shared_channel(&config.key_prefix),
        pending: HashSet::new(),
        shared_subscribed: false,
    };
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(listener.run(requests, pushes));
    }
    Ok(waker)
}

/// The task that keeps this node's subscriptions.
struct Listener {
    link: Link,
    waker: Weak<Waker>,
    shared: String,
    /// Topics whose channel is still to be subscribed (a subscription failed, or was lost).
    pending: HashSet<Topic>,
    shared_subscribed: bool,
}

/// How many topics' channels the listener subscribes at once.
const SUBSCRIBE_BATCH: usize = 256;

/// How often the listener forgets unread topics and retries what failed.
const TICK: Duration = Duration::from_secs(1);

impl Listener {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Topic>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(topic) => {
                        self.pending.insert(topic);
                        // Take every request waiting, to subscribe them together.
                        while let Ok(topic) = requests.try_recv() {
                            self.pending.insert(topic);
                        }
                        self.subscribe_pending(false).await;
                    }
                    None => return,
                },
                Some(push) = pushes.recv() => self.on_push(push).await,
                _ = tick.tick() => {
                    let Some(waker) = self.waker.upgrade() else { return };
                    let unread = waker.forget_unread();
                    drop(waker);
                    self.unsubscribe(unread).await;
                    if !self.shared_subscribed {
                        self.subscribe_shared().await;
                    }
                    self.subscribe_pending(true).await;
                }
            }
        }
    }

    async fn subscribe_shared(&mut self) {
        let mut connection = self.link.clone();
        let command = redis::cmd("SUBSCRIBE").arg(&self.shared).clone();
        match command.exec_async(&mut connection).await {
            Ok(()) => {
                self.shared_subscribed = true;
                // Topics may have been created while it was not subscribed.
                if let Some(waker) = self.waker.upgrade()
                    && waker.published.receiver_count() > 0
                {
                    let _ = waker.published.send(Listing::Relist);
                }
            }
            Err(error) => tracing::debug!(%error, "redis pub/sub unavailable"),
        }
    }

    /// Subscribes the channel of every pending topic still followed, one command per topic
    /// (on a cluster, channels of different slots live on different masters), many at once
    /// (the connection pipelines them); after a batch with a failure, the rest waits for the
    /// next tick.
    async fn subscribe_pending(&mut self, wake: bool) {
        let Some(waker) = self.waker.upgrade() else { return };
        let pending: Vec<Topic> =
            self.pending.drain().filter(|topic| waker.is_followed(topic)).collect();
        let mut batches = pending.chunks(SUBSCRIBE_BATCH);
        for batch in batches.by_ref() {
            let results = futures::future::join_all(batch.iter().map(|topic| {
                let mut connection = self.link.clone();
                let command = redis::cmd("SSUBSCRIBE").arg(channel(&waker.prefix, topic)).clone();
                async move { command.exec_async(&mut connection).await }
            }))
            .await;
            let mut failed = false;
            let mut again = HashSet::new();
            for (topic, result) in batch.iter().zip(results) {
                // Its readers go on either way: on a failure they check on their timer.
                waker.mark_subscribed(topic);
                match result {
                    Ok(()) if wake => {
                        // Subscribed again: a message may have come while it was not.
                        again.insert(topic.clone());
                    }
                    Ok(()) => {}
                    Err(error) => {
                        tracing::debug!(%topic, %error, "cannot subscribe a topic's wake-ups yet");
                        self.pending.insert(topic.clone());
                        failed = true;
                    }
                }
            }
            if !again.is_empty() {
                waker.wake_all(Some(&again));
            }
            if failed {
                break;
            }
        }
        for rest in batches {
            self.pending.extend(rest.iter().cloned());
        }
    }

    async fn unsubscribe(&mut self, topics: Vec<Topic>) {
        for topic in topics {
            self.pending.remove(&topic);
            let mut connection = self.link.clone();
            let command = redis::cmd("SUNSUBSCRIBE").arg(channel(self.prefix(), &topic)).clone();
            if let Err(error) = command.exec_async(&mut connection).await {
                // The connection is gone, and its subscriptions with it.
                tracing::debug!(%topic, %error, "cannot unsubscribe a topic's wake-ups");
            }
        }
    }

    fn prefix(&self) -> &str {
        self.shared.strip_suffix("wake").unwrap_or_default()
    }

    async fn on_push(&mut self, push: PushInfo) {
        let Some(waker) = self.waker.upgrade() else { return };
        let text = |value: Option<&Value>| match value {
            Some(Value::BulkString(bytes)) => Some(bytes.clone()),
            Some(Value::SimpleString(text)) => Some(text.clone().into_bytes()),
            _ => None,
        };
        let channel = text(push.data.first());
        match push.kind {
            PushKind::SMessage => {
                if let Some(topic) = channel.as_deref().and_then(|c| waker.topic_of(c)) {
                    waker.wake(&topic);
                }
            }
            PushKind::Message => {
                if let Some(payload) = text(push.data.get(1)) {
                    waker.created(&payload);
                }
            }
            // The server ended a topic's subscription: its slot moved to another master.
            PushKind::SUnsubscribe => {
                if let Some(topic) = channel.as_deref().and_then(|c| waker.topic_of(c))
                    && waker.is_followed(&topic)
                {
                    self.pending.insert(topic);
                    drop(waker);
                    self.subscribe_pending(true).await;
                }
            }
            PushKind::Disconnection => {
                // One connection (on a cluster, to one master) dropped, and its subscriptions
                // with it: subscribe everything again (a channel still subscribed elsewhere is
                // only confirmed), then wake every reader in case a wake-up was missed.
                tracing::debug!("redis pub/sub connection lost; subscribing again");
                self.shared_subscribed = false;
                self.pending.extend(waker.followed());
                drop(waker);
                // Give a failed-over cluster a moment before the first attempt; the tick retries.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.subscribe_shared().await;
                self.subscribe_pending(false).await;
                if let Some(waker) = self.waker.upgrade() {
                    waker.wake_all(None);
                }
            }
            _ => {}
        }
    }
}
