//! Sugar over the three traits, for every implementation at once.

use async_trait::async_trait;

use crate::cursor::Cursor;
use crate::error::Result;
use crate::message::Delivery;
use crate::topic::Topic;
use crate::traits::Fetch;

/// Conveniences on every [`Fetch`]; a blanket implementation covers brokers and clients alike.
#[async_trait]
pub trait FetchExt: Fetch {
    /// Reads pages from `cursor` until caught up, or until `max` messages were read: the
    /// deliveries in order (messages, and any gap where one was missed), and the cursor to go on
    /// from.
    ///
    /// ```
    /// # use pushpull_core::{Cursor, FetchExt, MemoryBroker, Publication, Publish, Topic};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let broker = MemoryBroker::new();
    /// let topic = Topic::new("notes").unwrap();
    /// for n in 0..250 {
    ///     broker.publish(&topic, Publication::new(format!("note {n}"))).await.unwrap();
    /// }
    /// let (deliveries, next) = broker.fetch_all(&topic, Cursor::Beginning, 10_000).await.unwrap();
    /// assert_eq!(deliveries.len(), 250);
    /// assert_eq!(next, deliveries[249].cursor());
    /// # });
    /// ```
    async fn fetch_all(
        &self,
        topic: &Topic,
        mut cursor: Cursor,
        max: usize,
    ) -> Result<(Vec<Delivery>, Cursor)> {
        const PAGE: usize = 100;
        let mut deliveries = Vec::new();
        let mut messages = 0;
        while messages < max {
            let page = self.fetch(topic, cursor, PAGE.min(max - messages)).await?;
            let caught_up = page.messages.is_empty() && page.gap.is_none();
            messages += page.messages.len();
            cursor = page.next;
            deliveries.extend(page.into_deliveries());
            if caught_up {
                break;
            }
        }
        Ok((deliveries, cursor))
    }
}

impl<T: Fetch + ?Sized> FetchExt for T {}
