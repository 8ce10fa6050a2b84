//! What reaches each subscription: deliveries that continue its cursor, and a pause at the
//! server while the application is behind.

use pushpull_core::{Continuity, Delivery, Error};
pub(super) use pushpull_http::Track;
use tokio::sync::mpsc;

use super::driver::{Driver, text};
use super::{Key, SubscribeReply};
use crate::wire::Request;

/// What the driver keeps of each subscription across sockets.
pub(super) struct Follow {
    /// The application's handle, to find the subscription when it is dropped.
    pub(super) local: u64,
    pub(super) deliveries: mpsc::Sender<Result<Delivery, Error>>,
    /// Where to resume: after the last delivery handed to the application.
    pub(super) position: Track,
    /// The subscribe request in flight, if any, and the application's reply. Until it is
    /// answered, the subscription's frames are dropped: they can only be an earlier
    /// subscription's, still on the way (the server answers a subscribe before its first push).
    pub(super) waiting: Option<(String, Option<SubscribeReply>)>,
    /// The application fell behind and the subscription is cancelled at the server until it
    /// has read half its buffer; the server's log holds what comes meanwhile. Also set while a
    /// refused resubscribe waits to be tried again.
    pub(super) paused: bool,
    /// A refused resubscribe is not tried again before this.
    pub(super) not_before: Option<tokio::time::Instant>,
    /// Resubscribes refused in a row (for backoff).
    pub(super) refusals: u32,
}

/// What the WebSocket protocol adds to a subscription's [`Track`]: the `after` that resumes it,
/// and what a `subscribed` answer says.
pub(super) trait OnTheSocket {
    /// The `after` of a subscribe that resumes it.
    fn after(&self) -> String;

    /// What the server said the subscription starts at: a cursor, or a prefix's cursor set.
    /// Taken only where it has no position of its own.
    fn started(&mut self, text: &str) -> Result<(), Error>;
}

impl OnTheSocket for Track {
    fn after(&self) -> String {
        match self {
            Track::One { position, .. } => position.cursor().to_string(),
            Track::Many(query) => query.resume_token().unwrap_or_else(|| {
                query.starts().first().map(|(_, start)| start.to_string()).unwrap_or_default()
            }),
        }
    }

    fn started(&mut self, text: &str) -> Result<(), Error> {
        match self {
            Track::One { position, .. } => {
                let cursor: pushpull_core::Cursor = text.parse()?;
                if !position.cursor().is_position() {
                    position.reset(cursor);
                }
            }
            Track::Many(query) => {
                let set = query.parse(text)?;
                query.announce(&set);
            }
        }
        Ok(())
    }
}

impl Driver {
    /// Queues a subscribe for `key` from where it stands; its frames are dropped until the
    /// answer comes.
    pub(super) fn subscribe_again(&mut self, key: &Key, prefix: &str) {
        let id = self.next_id(prefix);
        let Some(follow) = self.subscriptions.get_mut(key) else { return };
        let reply = follow.waiting.take().and_then(|(_, reply)| reply);
        follow.waiting = Some((id.clone(), reply));
        follow.paused = false;
        let request = Request::Subscribe {
            id,
            topic: Some(key.0.to_string()),
            after: Some(follow.position.after()),
            sub: key.1.clone(),
            info: None,
        };
        self.outbox.push(text(&request));
    }

    /// Hands a delivery to its subscription if it continues from where that stands: a repeat
    /// is dropped, and one that skips ahead makes the subscription start again from its cursor.
    pub(super) fn deliver(&mut self, key: &Key, delivery: Delivery) {
        let Some(follow) = self.subscriptions.get_mut(key) else { return };
        if follow.paused || follow.waiting.is_some() {
            // An earlier subscription's frame, sent before the server took in the pause or
            // resubscribe: what it carries comes again after the answer.
            return;
        }
        match follow.position.check(&delivery) {
            Continuity::Repeat => return,
            Continuity::Skip => {
                tracing::warn!(
                    topic = %key.0,
                    cursor = %follow.position.position_of(delivery.topic()),
                    got = %delivery.cursor(),
                    "a delivery skipped ahead of the subscription; subscribing again from its cursor"
                );
                self.outbox.push(text(&Request::Unsubscribe {
                    id: "resync".into(),
                    topic: Some(key.0.to_string()),
                    sub: key.1.clone(),
                }));
                self.subscribe_again(key, "resync-");
                return;
            }
            Continuity::Next => {}
        }
        let cursor = delivery.clone();
        match follow.deliveries.try_send(Ok(delivery)) {
            Ok(()) => follow.position.advance(&cursor),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Never block the socket on one slow reader: pause this subscription at the
                // server and take it up again from its cursor once the application caught up.
                follow.paused = true;
                self.outbox.push(text(&Request::Unsubscribe {
                    id: "pause".into(),
                    topic: Some(key.0.to_string()),
                    sub: key.1.clone(),
                }));
            }
            // The application dropped the subscription; the unsubscribe command follows.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// A running subscription whose resubscribe the server refused with an error a retry can
    /// fix (its broker's storage is away, say): subscribe again after a backoff, from where it
    /// stands, rather than end it.
    pub(super) fn retry_later(&mut self, key: &Key) {
        let backoff = self.config.backoff.clone();
        let Some(follow) = self.subscriptions.get_mut(key) else { return };
        follow.waiting = None;
        follow.paused = true;
        follow.not_before = Some(tokio::time::Instant::now() + backoff.delay(follow.refusals));
        follow.refusals = follow.refusals.saturating_add(1);
    }

    /// Subscribes again, from their cursors, the paused subscriptions whose application has
    /// read at least half of its buffer (and whose retry time, if any, has come).
    pub(super) fn resume_caught_up(&mut self) {
        let now = tokio::time::Instant::now();
        let ready: Vec<Key> = self
            .subscriptions
            .iter()
            .filter(|(_, f)| {
                f.paused
                    && f.deliveries.capacity() * 2 >= f.deliveries.max_capacity()
                    && f.not_before.is_none_or(|at| at <= now)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &ready {
            self.subscribe_again(key, "resume-");
        }
    }
}
