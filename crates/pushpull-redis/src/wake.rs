//! Wake-ups: one pub/sub subscription per node, fanned out to this node's readers.
//!
//! A wake-up only says "topic T has offset N now"; readers then read the stream by cursor, so a
//! lost or late wake-up costs latency, never data (readers also check on a timer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use pushpull_core::{Backoff, Listing, Topic};
use tokio::sync::{broadcast, watch};

/// This node's readers' wake-up signals, by topic.
pub(crate) struct Waker {
    topics: Mutex<HashMap<Topic, watch::Sender<u64>>>,
    /// Every topic woken, for subscriptions by prefix (which pick the topics they select that
    /// they do not follow yet); sent to only while someone listens.
    published: broadcast::Sender<Listing>,
}

impl Default for Waker {
    fn default() -> Self {
        Self { topics: Mutex::default(), published: broadcast::Sender::new(1024) }
    }
}

impl Waker {
    /// Topics as wake-ups name them.
    pub(crate) fn published(&self) -> broadcast::Receiver<Listing> {
        self.published.subscribe()
    }

    /// A receiver woken when `topic` gets a message (the value is the offset announced).
    pub(crate) fn watch(&self, topic: &Topic) -> watch::Receiver<u64> {
        let mut topics = self.topics.lock().expect("waker lock");
        if let Some(sender) = topics.get(topic) {
            return sender.subscribe();
        }
        // Forget topics nobody waits on any more, now and then: when the map has doubled.
        if topics.len().is_power_of_two() {
            topics.retain(|_, sender| sender.receiver_count() > 0);
        }
        topics.entry(topic.clone()).or_insert_with(|| watch::Sender::new(0)).subscribe()
    }

    /// How many readers are waiting on this node.
    pub(crate) fn readers(&self) -> usize {
        let topics = self.topics.lock().expect("waker lock");
        topics.values().map(watch::Sender::receiver_count).sum()
    }

    fn wake(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else { return };
        let mut parts = text.split(' ');
        let (Some(topic), Some(_epoch), Some(offset)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(topic), Ok(offset)) = (Topic::new(topic), offset.parse::<u64>()) else { return };
        if let Some(sender) = self.topics.lock().expect("waker lock").get(&topic) {
            sender.send_replace(offset);
        }
        // A presence log is no topic a prefix selects.
        if self.published.receiver_count() > 0 && !topic.is_presence() {
            let _ = self.published.send(Listing::Published(topic));
        }
    }

    /// Wakes every reader: after a pub/sub outage, wake-ups may have been missed (and topics
    /// created meanwhile, which prefix subscriptions list again).
    fn wake_all(&self) {
        for sender in self.topics.lock().expect("waker lock").values() {
            sender.send_modify(|_| {});
        }
        if self.published.receiver_count() > 0 {
            let _ = self.published.send(Listing::Relist);
        }
    }
}

/// Listens on `channel` for as long as `waker` lives, reconnecting with backoff.
pub(crate) fn listen(client: redis::Client, channel: String, waker: Weak<Waker>) {
    tokio::spawn(async move {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut failures = 0;
        loop {
            if waker.strong_count() == 0 {
                return;
            }
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(pubsub)) => {
                    failures = 0;
                    if let Some(waker) = waker.upgrade() {
                        waker.wake_all();
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        // Wake up now and then to notice a dropped broker.
                        match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                            Ok(Some(message)) => match waker.upgrade() {
                                Some(waker) => waker.wake(message.get_payload_bytes()),
                                None => return,
                            },
                            Ok(None) => break,
                            Err(_) if waker.strong_count() == 0 => return,
                            Err(_) => {}
                        }
                    }
                    tracing::debug!("redis pub/sub connection lost; reconnecting");
                }
                Ok(Err(error)) => tracing::debug!(%error, "redis pub/sub unavailable"),
                Err(_) => tracing::debug!("redis pub/sub did not answer"),
            }
            tokio::time::sleep(backoff.delay(failures)).await;
            failures = failures.saturating_add(1);
        }
    });
}

/// Keeps the listener's reference weak: the broker owns the waker.
pub(crate) fn shared() -> Arc<Waker> {
    Arc::new(Waker::default())
}
