//! Sugar over the three traits, for every implementation at once.

use async_trait::async_trait;

use crate::cursor::{Cursor, Offset};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Delivery, Gap, GapReason, OffsetRange, Page};
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

/// [`Fetch::fetch_newest_first`] from forward pages: finds the end, reads the `limit`
/// messages before `before` forward (in as many pages as the fetcher gives), and turns them
/// round.
pub(crate) async fn newest_first<F: Fetch + ?Sized>(
    fetcher: &F,
    topic: &Topic,
    before: Cursor,
    limit: usize,
) -> Result<Page> {
    if limit == 0 {
        return Err(Error::bad_request("limit must be at least 1"));
    }
    let end = fetcher.fetch(topic, Cursor::Latest, 1).await?.next;
    let Cursor::After(epoch, Offset(last)) = end else {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("a page's next is {end}, not a position"),
        ));
    };
    let mut gap = None;
    let top = match before {
        Cursor::After(e, Offset(at)) if e == epoch => {
            if at > last {
                return Err(Error::new(
                    ErrorKind::InvalidCursor,
                    format!(
                        "cursor {before} is ahead of topic {topic}, whose last offset is {last}"
                    ),
                ));
            }
            at
        }
        Cursor::After(previous, _) => {
            gap = Some(Gap {
                topic: topic.clone(),
                reason: GapReason::EpochChanged { previous },
                missed: None,
                cursor: end,
            });
            last
        }
        Cursor::Beginning => 0,
        Cursor::Latest | Cursor::Last(_) | Cursor::Since(_) => last,
    };
    let start = top.saturating_sub(limit as u64);
    let mut messages = Vec::new();
    let mut cursor = Cursor::After(epoch, Offset(start));
    let mut first_retained = None;
    if top > 0 {
        loop {
            let page = fetcher.fetch(topic, cursor, limit).await?;
            match &page.gap {
                Some(g) if g.reason == GapReason::Retention => {
                    first_retained = g.missed.map(|m| m.last.0 + 1);
                }
                Some(g) => {
                    return Err(Error::new(
                        ErrorKind::Backend,
                        format!("the log of {topic} changed while it was read ({:?})", g.reason),
                    )
                    .with_retryable(true));
                }
                None => {}
            }
            let reached = page.messages.last().is_none_or(|m| m.offset.0 >= top);
            messages.extend(page.messages.into_iter().filter(|m| m.offset.0 <= top));
            if reached {
                break;
            }
            cursor = page.next;
        }
    }
    messages.reverse();
    let mut next = Cursor::After(epoch, Offset(start));
    if let Some(first) = first_retained {
        // Past the oldest retained: everything older is gone, and reading back ends here.
        next = Cursor::After(epoch, Offset(0));
        gap = Some(Gap {
            topic: topic.clone(),
            reason: GapReason::Retention,
            missed: Some(OffsetRange { first: Offset(1), last: Offset((first - 1).min(top)) }),
            cursor: next,
        });
    }
    Ok(Page { gap, messages, next })
}
