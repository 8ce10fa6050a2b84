//! Following several topics at once.

use std::task::Poll;

use futures::StreamExt;

use crate::cursor::Cursor;
use crate::error::Result;
use crate::many::MultiSubscription;
use crate::message::Delivery;
use crate::topic::Topic;
use crate::traits::Subscription;

/// One entry of a set: a topic's subscription, or many topics' as one.
#[derive(Debug)]
enum Entry {
    One(Subscription),
    Many(MultiSubscription),
}

impl Entry {
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Result<Delivery>>> {
        match self {
            Entry::One(subscription) => subscription.poll_next_unpin(cx),
            Entry::Many(subscription) => subscription.poll_next_unpin(cx),
        }
    }
}

/// Several subscriptions, each under its own key (by default its topic), read as one:
/// [`next`](Self::next) yields the next delivery of whichever has one, scanning from a rotating
/// start so a busy subscription cannot starve the others. Used by servers that push many
/// subscriptions down one connection.
#[derive(Debug)]
pub struct SubscriptionSet<K = Topic> {
    /// Each subscription under its key, and whether it is parked.
    entries: Vec<(K, Entry, bool)>,
    turn: usize,
}

impl<K> Default for SubscriptionSet<K> {
    fn default() -> Self {
        Self { entries: Vec::new(), turn: 0 }
    }
}

impl SubscriptionSet<Topic> {
    /// Adds a subscription under its topic; false (and nothing changes) if the topic is
    /// already in the set.
    pub fn insert(&mut self, subscription: Subscription) -> bool {
        self.insert_as(subscription.topic().clone(), subscription)
    }
}

impl<K: Clone + PartialEq> SubscriptionSet<K> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscription under `key`; false (and nothing changes) if the key is taken.
    pub fn insert_as(&mut self, key: K, subscription: Subscription) -> bool {
        self.insert_entry(key, Entry::One(subscription))
    }

    /// Adds a subscription to many topics ([`follow`](crate::follow)) under `key`; false (and
    /// nothing changes) if the key is taken.
    pub fn insert_many_as(&mut self, key: K, subscription: MultiSubscription) -> bool {
        self.insert_entry(key, Entry::Many(subscription))
    }

    fn insert_entry(&mut self, key: K, entry: Entry) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.entries.push((key, entry, false));
        true
    }

    /// Removes the subscription under `key`; false if there was none.
    pub fn remove(&mut self, key: &K) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _, _)| k != key);
        self.entries.len() != before
    }

    /// Whether `key` is in the set.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }

    /// The keys, in the order the subscriptions were added.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _, _)| k)
    }

    /// How many subscriptions the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cursor of the single-topic subscription under `key` (after its last delivery).
    pub fn cursor(&self, key: &K) -> Option<Cursor> {
        self.entries.iter().find(|(k, _, _)| k == key).and_then(|(_, entry, _)| match entry {
            Entry::One(subscription) => Some(subscription.cursor()),
            Entry::Many(_) => None,
        })
    }

    /// Parks the subscription under `key`: [`next`](Self::next) passes it by (it stays in the
    /// set, counted and listed) until it is [unparked](Self::unpark). For a subscription whose
    /// deliveries something else writes meanwhile. False if there is none.
    pub fn park(&mut self, key: &K) -> bool {
        match self.entries.iter_mut().find(|(k, _, _)| k == key) {
            Some((_, _, parked)) => {
                *parked = true;
                true
            }
            None => false,
        }
    }

    /// Unparks the subscription under `key`, replacing it with `replacement` if given (read on
    /// from where the deliveries written meanwhile left it). False if there is none.
    pub fn unpark(&mut self, key: &K, replacement: Option<Subscription>) -> bool {
        match self.entries.iter_mut().find(|(k, _, _)| k == key) {
            Some((_, entry, parked)) => {
                *parked = false;
                if let Some(subscription) = replacement {
                    *entry = Entry::One(subscription);
                }
                true
            }
            None => false,
        }
    }

    /// The next item of any subscription not parked, with its key: a delivery, an error, or
    /// `None` when that subscription ended (remove it). Pends forever on an empty set.
    pub async fn next(&mut self) -> (K, Option<Result<Delivery>>) {
        std::future::poll_fn(|cx| {
            let count = self.entries.len();
            for step in 0..count {
                let index = (self.turn + step) % count;
                let (_, entry, parked) = &mut self.entries[index];
                if *parked {
                    continue;
                }
                if let Poll::Ready(item) = entry.poll_next(cx) {
                    self.turn = (index + 1) % count;
                    return Poll::Ready((self.entries[index].0.clone(), item));
                }
            }
            Poll::Pending
        })
        .await
    }
}
