//! Following several topics at once.

use std::task::Poll;

use futures::StreamExt;

use crate::error::Result;
use crate::message::Delivery;
use crate::topic::Topic;
use crate::traits::Subscription;

/// Several subscriptions, one per topic, read as one: [`next`](Self::next) yields the next
/// delivery of whichever has one, scanning from a rotating start so a busy topic cannot starve
/// the others. Used by servers that push many topics down one connection.
#[derive(Debug, Default)]
pub struct SubscriptionSet {
    entries: Vec<(Topic, Subscription)>,
    turn: usize,
}

impl SubscriptionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscription; false (and nothing changes) if its topic is already in the set.
    pub fn insert(&mut self, subscription: Subscription) -> bool {
        if self.contains(subscription.topic()) {
            return false;
        }
        self.entries.push((subscription.topic().clone(), subscription));
        true
    }

    /// Removes the subscription to `topic`; false if there was none.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(t, _)| t != topic);
        self.entries.len() != before
    }

    /// Whether `topic` is in the set.
    pub fn contains(&self, topic: &Topic) -> bool {
        self.entries.iter().any(|(t, _)| t == topic)
    }

    /// How many subscriptions the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next item of any subscription, with its topic: a delivery, an error, or `None` when
    /// that subscription ended (remove it). Pends forever on an empty set.
    pub async fn next(&mut self) -> (Topic, Option<Result<Delivery>>) {
        std::future::poll_fn(|cx| {
            let count = self.entries.len();
            for step in 0..count {
                let index = (self.turn + step) % count;
                if let Poll::Ready(item) = self.entries[index].1.poll_next_unpin(cx) {
                    self.turn = (index + 1) % count;
                    return Poll::Ready((self.entries[index].0.clone(), item));
                }
            }
            Poll::Pending
        })
        .await
    }
}
