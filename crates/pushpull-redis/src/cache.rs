//! The node-local tail of each followed topic: what this node's subscribers read from.
//!
//! When a message is published, every subscriber of its topic on a node is woken. Rather than
//! each reading Redis, the first to look starts one read of the new entries (the others wait
//! for it instead of asking too) into a bounded window of recent messages; the others, and
//! everyone after, read that window. The read is a task of its own, not the subscriber's: a
//! subscriber that its owner stops polling half-way holds up no other (the window's lock is
//! never held across an await). A subscriber whose cursor the window does
//! not cover (behind it, or of another epoch) reads Redis itself, where retention and epochs
//! are decided. Messages are shared handles (`Bytes`), never copied per subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use futures::future::{BoxFuture, Shared};

use pushpull_core::{Cursor, Epoch, Message, Offset, Page, Topic};

/// The most recent messages a node keeps per followed topic (fewer when the topic retains
/// fewer: a node never holds more of a topic than Redis does).
pub(crate) const WINDOW: usize = 4096;

/// One topic's window.
pub(crate) struct Window {
    /// The most messages it keeps.
    capacity: usize,
    pub(crate) epoch: Option<Epoch>,
    /// Consecutive messages, oldest first.
    pub(crate) messages: VecDeque<Message>,
    /// The offset the window reaches: its last message's, or where it was started.
    pub(crate) last: u64,
    /// Its last read from Redis at its end: the topic's wake-up count seen before it, and
    /// when it started.
    read: Option<(u64, Instant)>,
    /// The read at its end under way, if one is: every subscriber that needs it waits for it.
    pub(crate) reading: Option<Reading>,
}

/// A read of Redis at a window's end, under way in a task of its own: done once the window
/// has what it found (or with the error it failed with).
pub(crate) type Reading = Shared<BoxFuture<'static, Result<(), Arc<pushpull_core::Error>>>>;

impl Default for Window {
    fn default() -> Self {
        Self::with_capacity(WINDOW)
    }
}

impl Window {
    /// An empty window keeping at most `capacity` messages (and at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            epoch: None,
            messages: VecDeque::new(),
            last: 0,
            read: None,
            reading: None,
        }
    }

    /// Whether the window already has what a read from Redis at its end would find for a
    /// reader that has seen `seen` wake-ups of the topic and, with `since`, wants a read
    /// started no earlier: its last read started after as many wake-ups (every message they
    /// announced was in Redis by then) and not before `since`. Then the subscribers woken by
    /// one publish, or checking after a quiet spell, read Redis once between them, not once
    /// each.
    pub(crate) fn fresh(&self, seen: u64, since: Option<Instant>) -> bool {
        self.read.is_some_and(|(wakes, at)| wakes >= seen && since.is_none_or(|since| at >= since))
    }

    /// Notes a read from Redis at the window's end, started at `at` after `seen` wake-ups.
    ///
    /// A read sees what every read started before it saw, and a wake-up is sent once its
    /// message is in Redis: so the window has what a read started at the latest of its reads'
    /// starts would find, after the most wake-ups any of them had seen.
    pub(crate) fn read_at_end(&mut self, seen: u64, at: Instant) {
        self.read = Some(match self.read {
            Some((wakes, started)) => (wakes.max(seen), started.max(at)),
            None => (seen, at),
        });
    }

    /// The messages after `cursor`, if the window covers it: `None` sends the reader to Redis.
    pub(crate) fn after(&self, cursor: Cursor, limit: usize) -> Option<Page> {
        let Cursor::After(epoch, Offset(at)) = cursor else { return None };
        if self.epoch != Some(epoch) || at > self.last {
            return None;
        }
        let first = self.messages.front().map_or(self.last + 1, |m| m.offset.0);
        if at + 1 < first {
            return None;
        }
        let skip = (at + 1 - first) as usize;
        let messages: Vec<Message> = self.messages.iter().skip(skip).take(limit).cloned().collect();
        let next = messages.last().map_or(cursor, Message::cursor);
        Some(Page { gap: None, messages, next })
    }

    /// Takes in what a read from Redis after `from` found: continues the window when it
    /// follows on, starts it afresh otherwise.
    pub(crate) fn extend(&mut self, from: Cursor, page: &Page) {
        let Cursor::After(epoch, Offset(at)) = page.next else { return };
        let continues = page.gap.is_none()
            && self.epoch == Some(epoch)
            && matches!(from, Cursor::After(e, Offset(o)) if e == epoch && o == self.last);
        if !continues {
            self.epoch = Some(epoch);
            self.messages.clear();
            self.last = at - page.messages.len() as u64;
        }
        for message in &page.messages {
            if message.offset.0 == self.last + 1 {
                self.last = message.offset.0;
                self.messages.push_back(message.clone());
            }
        }
        while self.messages.len() > self.capacity {
            self.messages.pop_front();
        }
    }
}

/// The windows of the topics this node's subscribers follow; a window goes with its last
/// subscriber.
pub(crate) struct Windows {
    topics: Mutex<HashMap<Topic, Weak<Mutex<Window>>>>,
    /// Each window's capacity: [`WINDOW`], or what a topic retains if that is fewer.
    capacity: usize,
}

impl Windows {
    /// Windows of at most `retained` messages (a topic's retention), and [`WINDOW`] at most.
    pub(crate) fn new(retained: usize) -> Self {
        Self { topics: Mutex::default(), capacity: retained.min(WINDOW) }
    }

    pub(crate) fn of(&self, topic: &Topic) -> Arc<Mutex<Window>> {
        let mut topics = self.topics.lock().expect("windows lock");
        if let Some(window) = topics.get(topic).and_then(Weak::upgrade) {
            return window;
        }
        // Forget windows nobody reads any more, now and then: when the map has doubled.
        if topics.len().is_power_of_two() {
            topics.retain(|_, window| window.strong_count() > 0);
        }
        let window = Arc::new(Mutex::new(Window::with_capacity(self.capacity)));
        topics.insert(topic.clone(), Arc::downgrade(&window));
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::Publication;

    fn page(epoch: Epoch, offsets: std::ops::RangeInclusive<u64>) -> Page {
        let topic = Topic::new("t").unwrap();
        let messages: Vec<Message> = offsets
            .map(|o| Publication::new("m").into_message(topic.clone(), epoch, Offset(o)))
            .collect();
        let next = messages.last().map(Message::cursor).unwrap();
        Page { gap: None, messages, next }
    }

    #[test]
    fn serves_what_it_covers_and_sends_the_rest_to_redis() {
        let epoch = Epoch::from_u64(5);
        let at = |o| Cursor::After(epoch, Offset(o));
        let mut window = Window::default();
        assert!(window.after(at(0), 10).is_none(), "an empty window covers nothing");
        window.extend(at(0), &page(epoch, 1..=3));
        window.extend(at(3), &page(epoch, 4..=6));
        let served = window.after(at(2), 2).unwrap();
        let offsets: Vec<u64> = served.messages.iter().map(|m| m.offset.0).collect();
        assert_eq!((offsets, served.next), (vec![3, 4], at(4)));
        assert!(window.after(at(6), 10).unwrap().messages.is_empty(), "at the end: nothing yet");
        assert!(window.after(at(7), 10).is_none(), "ahead of the window");
        assert!(window.after(Cursor::After(Epoch::from_u64(9), Offset(2)), 10).is_none());
        // A page that does not follow on starts the window afresh.
        window.extend(at(9), &page(epoch, 10..=11));
        assert!(window.after(at(6), 10).is_none());
        assert_eq!(window.after(at(9), 10).unwrap().messages.len(), 2);
    }

    #[test]
    fn stays_bounded() {
        let epoch = Epoch::from_u64(5);
        let mut window = Window::default();
        window.extend(Cursor::After(epoch, Offset(0)), &page(epoch, 1..=(WINDOW as u64 + 10)));
        assert_eq!(window.messages.len(), WINDOW);
        assert!(window.after(Cursor::After(epoch, Offset(5)), 1).is_none(), "fell out: Redis");
    }

    #[test]
    fn holds_no_more_than_the_topic_retains() {
        let epoch = Epoch::from_u64(5);
        let windows = Windows::new(100);
        let window = windows.of(&Topic::new("t").unwrap());
        let mut window = window.lock().unwrap();
        window.extend(Cursor::After(epoch, Offset(0)), &page(epoch, 1..=1000));
        assert_eq!(window.messages.len(), 100);
        assert_eq!(window.messages.front().unwrap().offset, Offset(901));
    }
}
