//! Following many topics as one: selectors (a topic, or every topic with a prefix), the cursor
//! set that resumes them all, and the subscription that merges them.

use std::collections::HashSet;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::cursor::{Cursor, Epoch, Offset};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Delivery;
use crate::set::SubscriptionSet;
use crate::topic::{MAX_TOPIC_LEN, Topic};
use crate::traits::Client;

/// What a connection follows: one topic, or every topic whose name starts with a prefix
/// (`orders:*`), those first published while it is open included.
///
/// ```
/// use pushpull_core::Selector;
/// let prefix: Selector = "orders:*".parse().unwrap();
/// assert!(prefix.matches(&"orders:eu".parse().unwrap()));
/// assert_eq!(prefix.to_string(), "orders:*");
/// assert!("orders:*:x".parse::<Selector>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// This topic.
    Topic(Topic),
    /// Every topic starting with this prefix (empty: every topic).
    Prefix(Arc<str>),
}

impl Selector {
    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &Topic) -> bool {
        match self {
            Selector::Topic(name) => name == topic,
            Selector::Prefix(prefix) => topic.as_str().starts_with(&**prefix),
        }
    }

    /// The prefix, for a prefix selector.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Selector::Prefix(prefix) => Some(prefix),
            Selector::Topic(_) => None,
        }
    }
}

impl FromStr for Selector {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let Some(prefix) = text.strip_suffix('*') else {
            return Topic::new(text).map(Selector::Topic);
        };
        let bad = |why: String| {
            let shown: String = text.chars().take(MAX_TOPIC_LEN + 1).collect();
            Error::new(ErrorKind::InvalidTopic, format!("invalid topic prefix {shown:?}: {why}"))
        };
        if prefix.is_empty() {
            return Ok(Selector::Prefix(Arc::from("")));
        }
        if prefix.len() >= MAX_TOPIC_LEN {
            return Err(bad(format!("a prefix is shorter than {MAX_TOPIC_LEN} bytes")));
        }
        // A prefix follows the rules of a topic name (`*` only at the end).
        Topic::new(prefix).map_err(|e| bad(e.message().to_owned()))?;
        Ok(Selector::Prefix(Arc::from(prefix)))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Topic(topic) => f.write_str(topic.as_str()),
            Selector::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Where a reader of many topics stands: a position per topic. Its text form is the resume
/// token of a connection that follows several topics (SSE's `id:`, the stream's records, the
/// long poll's `next`), written relative to the connection's selectors so that it stays short:
///
/// ```text
/// @EPOCH,KEY~POSITION,KEY~POSITION,…
/// ```
///
/// - `EPOCH` is the epoch most positions share (empty when there are none);
/// - `KEY` is the index of the selector that names the topic (`0`, `1`, …), or, for a topic
///   found by a prefix selector, that selector's index, `*`, and the rest of the name
///   (`2*eu` is `orders:eu` when selector 2 is `orders:*`);
/// - `POSITION` is the offset when the epoch is `EPOCH`, else `EPOCH-OFFSET`.
///
/// Twenty topics at offsets under 10,000 take about 180 bytes. A set that only a server
/// hands out, and a client hands back, unchanged: `@` marks it, so a resumed connection is told
/// from a fresh one even when the set is empty.
///
/// ```
/// use pushpull_core::{Cursor, CursorSet, Epoch, Offset, Selector};
/// let selectors: Vec<Selector> =
///     ["ticker", "orders:*"].iter().map(|s| s.parse().unwrap()).collect();
/// let epoch = Epoch::from_u64(0x0f3a9c1d2b4e5f60);
/// let mut set = CursorSet::new();
/// set.set("ticker".parse().unwrap(), Cursor::After(epoch, Offset(42)));
/// set.set("orders:eu".parse().unwrap(), Cursor::After(epoch, Offset(7)));
/// let text = set.encode(&selectors);
/// assert_eq!(text, "@0f3a9c1d2b4e5f60,0~42,1*eu~7");
/// assert_eq!(CursorSet::parse(&text, &selectors).unwrap(), set);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorSet {
    entries: Vec<(Topic, Cursor)>,
}

/// The longest cursor set text accepted.
pub const MAX_CURSOR_SET_LEN: usize = 16 * 1024;

/// After the `@`, the mark of a set that names its topics.
const NAMED: char = '=';

impl CursorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position of `topic`, if the set has one.
    pub fn get(&self, topic: &Topic) -> Option<Cursor> {
        self.entries.iter().find(|(t, _)| t == topic).map(|(_, c)| *c)
    }

    /// Sets the position of `topic`.
    pub fn set(&mut self, topic: Topic, cursor: Cursor) {
        match self.entries.iter_mut().find(|(t, _)| *t == topic) {
            Some(entry) => entry.1 = cursor,
            None => self.entries.push((topic, cursor)),
        }
    }

    /// Moves the position of the delivery's topic past it.
    pub fn advance(&mut self, delivery: &Delivery) {
        self.set(delivery.topic().clone(), delivery.cursor());
    }

    /// The set as it stood before `pending` (deliveries read but not yet handed over, in
    /// order): each of their topics moved back to just before its first one (a message's
    /// offset less one; a retention gap's first missed offset less one). A topic whose first
    /// pending delivery is an epoch change keeps its position.
    pub fn before<'a>(&self, pending: impl IntoIterator<Item = &'a Delivery>) -> CursorSet {
        let mut set = self.clone();
        let mut seen = HashSet::new();
        for delivery in pending {
            if !seen.insert(delivery.topic().clone()) {
                continue;
            }
            if let Some(before) = delivery.before() {
                set.set(delivery.topic().clone(), before);
            }
        }
        set
    }

    /// The entries of the topics `selector` selects.
    pub fn only(&self, selector: &Selector) -> CursorSet {
        let entries = self.entries.iter().filter(|(t, _)| selector.matches(t)).cloned().collect();
        CursorSet { entries }
    }

    /// The topics and their positions, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&Topic, Cursor)> {
        self.entries.iter().map(|(t, c)| (t, *c))
    }

    /// How many topics it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The text form relative to `selectors`. A topic no selector names is left out.
    pub fn encode(&self, selectors: &[Selector]) -> String {
        self.write(|out, topic| {
            use std::fmt::Write;
            let (index, rest) = key_of(topic, selectors)?;
            let _ = match rest {
                None => write!(out, "{index}"),
                Some(rest) => write!(out, "{index}*{rest}"),
            };
            Some(())
        })
    }

    /// The text form that names each topic in full, for a set whose selectors the client did
    /// not choose (a server-decided subscription follows what its token may read, and a renewed
    /// token may grant other topics in another order): `@=EPOCH,NAME~POSITION,…`. Read with
    /// [`parse_named`](Self::parse_named).
    ///
    /// ```
    /// use pushpull_core::{Cursor, CursorSet, Epoch, Offset, Selector};
    /// let epoch = Epoch::from_u64(0x0f3a9c1d2b4e5f60);
    /// let mut set = CursorSet::new();
    /// set.set("orders:eu".parse().unwrap(), Cursor::After(epoch, Offset(7)));
    /// let text = set.encode_named();
    /// assert_eq!(text, "@=0f3a9c1d2b4e5f60,orders:eu~7");
    /// let granted: Vec<Selector> = vec!["orders:*".parse().unwrap()];
    /// assert_eq!(CursorSet::parse_named(&text, &granted).unwrap(), set);
    /// ```
    pub fn encode_named(&self) -> String {
        let mut text = self.write(|out, topic| {
            out.push_str(topic.as_str());
            Some(())
        });
        text.insert(1, NAMED);
        text
    }

    /// `@EPOCH` and an entry `,KEY~POSITION` per topic that `key` writes a key for.
    fn write(&self, mut key: impl FnMut(&mut String, &Topic) -> Option<()>) -> String {
        use std::fmt::Write;
        let common = self.common_epoch();
        let mut out = String::with_capacity(18 + self.entries.len() * 10);
        out.push('@');
        if let Some(epoch) = common {
            let _ = write!(out, "{epoch}");
        }
        for (topic, cursor) in &self.entries {
            let entry = out.len();
            out.push(',');
            if key(&mut out, topic).is_none() {
                out.truncate(entry);
                continue;
            }
            out.push('~');
            match cursor {
                Cursor::After(epoch, offset) if Some(*epoch) == common => {
                    let _ = write!(out, "{offset}");
                }
                other => {
                    let _ = write!(out, "{other}");
                }
            }
        }
        out
    }

    fn common_epoch(&self) -> Option<Epoch> {
        let mut counts: Vec<(Epoch, usize)> = Vec::new();
        for epoch in self.entries.iter().filter_map(|(_, c)| c.epoch()) {
            match counts.iter_mut().find(|(e, _)| *e == epoch) {
                Some(count) => count.1 += 1,
                None => counts.push((epoch, 1)),
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(e, _)| e)
    }

    /// Whether `text` is a cursor set (it starts with `@`) rather than one starting point.
    pub fn is_set(text: &str) -> bool {
        text.starts_with('@')
    }

    /// Parses the text form relative to `selectors`, with an error that names the bad entry.
    pub fn parse(text: &str, selectors: &[Selector]) -> Result<Self> {
        Self::read(text, false, |key, bad| {
            let (index, rest) = match key.split_once('*') {
                Some((index, rest)) => (index, Some(rest)),
                None => (key, None),
            };
            let index: usize = index
                .parse()
                .ok()
                .filter(|i| *i < selectors.len())
                .ok_or_else(|| bad("the key names no selector of this request"))?;
            let topic = match (&selectors[index], rest) {
                (Selector::Topic(topic), None) => topic.clone(),
                (Selector::Prefix(prefix), Some(rest)) => {
                    Topic::new(format!("{prefix}{rest}")).map_err(|e| bad(e.message()))?
                }
                _ => return Err(bad("the key does not fit its selector")),
            };
            Ok(Some(topic))
        })
    }

    /// Parses the form of [`encode_named`](Self::encode_named). A topic that none of
    /// `selectors` selects is left out: the connection no longer follows it (its token's
    /// rights changed).
    pub fn parse_named(text: &str, selectors: &[Selector]) -> Result<Self> {
        Self::read(text, true, |key, bad| {
            let topic = Topic::new(key).map_err(|e| bad(e.message()))?;
            Ok(selectors.iter().any(|s| s.matches(&topic)).then_some(topic))
        })
    }

    /// Reads `@EPOCH` (`@=EPOCH` when `named`) and the entries, each entry's key through `topic`
    /// (`None`: the entry is left out).
    fn read(
        text: &str,
        named: bool,
        topic: impl Fn(&str, &dyn Fn(&str) -> Error) -> Result<Option<Topic>>,
    ) -> Result<Self> {
        let shown: String = text.chars().take(64).collect();
        let bad = |why: String| {
            Error::new(ErrorKind::InvalidCursor, format!("invalid cursor set {shown:?}: {why}"))
        };
        if text.len() > MAX_CURSOR_SET_LEN {
            return Err(bad(format!("longer than {MAX_CURSOR_SET_LEN} bytes")));
        }
        let Some(body) = text.strip_prefix('@') else {
            return Err(bad("a cursor set starts with '@'".into()));
        };
        let body = match (body.strip_prefix(NAMED), named) {
            (Some(body), true) => body,
            (None, false) => body,
            (Some(_), false) => {
                return Err(bad("this set names its topics (@=…): it resumes a connection that \
                                named no topic, which follows what its token may read"
                    .into()));
            }
            (None, true) => {
                return Err(bad("this connection follows what its token may read, and resumes \
                                from a set that names its topics (@=…), not from one written \
                                against a request's topic parameters"
                    .into()));
            }
        };
        let mut parts = body.split(',');
        let common = match parts.next().unwrap_or_default() {
            "" => None,
            epoch => Some(epoch.parse::<Epoch>().map_err(|e| bad(e.message().to_owned()))?),
        };
        let mut set = CursorSet::new();
        for entry in parts {
            let entry_bad = |why: &str| bad(format!("entry {entry:?}: {why}"));
            let (key, position) =
                entry.split_once('~').ok_or_else(|| entry_bad("expected KEY~POSITION"))?;
            let Some(topic) = topic(key, &entry_bad)? else { continue };
            let cursor = if !position.is_empty() && position.bytes().all(|b| b.is_ascii_digit()) {
                let epoch = common.ok_or_else(|| entry_bad("an offset without an epoch"))?;
                let offset =
                    position.parse::<u64>().map_err(|_| entry_bad("offset out of range"))?;
                Cursor::After(epoch, Offset(offset))
            } else {
                position.parse::<Cursor>().map_err(|e| entry_bad(e.message()))?
            };
            if set.get(&topic).is_some() {
                return Err(entry_bad("the topic is named twice"));
            }
            set.set(topic, cursor);
        }
        Ok(set)
    }
}

/// How a connection's cursor set is written and read: against the selectors its client named,
/// by index ([`CursorSet::encode`]), or, for a server-decided subscription (the selectors are
/// what the token may read), by name ([`CursorSet::encode_named`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKeys {
    /// Relative to these selectors, as the client named them.
    Indexed(Vec<Selector>),
    /// By name; a topic none of these selectors selects is left out when read.
    Named(Vec<Selector>),
}

impl SetKeys {
    /// The selectors.
    pub fn selectors(&self) -> &[Selector] {
        match self {
            SetKeys::Indexed(selectors) | SetKeys::Named(selectors) => selectors,
        }
    }

    /// The text of `set`.
    pub fn encode(&self, set: &CursorSet) -> String {
        match self {
            SetKeys::Indexed(selectors) => set.encode(selectors),
            SetKeys::Named(_) => set.encode_named(),
        }
    }

    /// The set `text` writes.
    pub fn parse(&self, text: &str) -> Result<CursorSet> {
        match self {
            SetKeys::Indexed(selectors) => CursorSet::parse(text, selectors),
            SetKeys::Named(selectors) => CursorSet::parse_named(text, selectors),
        }
    }
}

/// The key of `topic` among `selectors`: the index of the selector naming it, and for a
/// prefix selector the rest of the name.
fn key_of<'a>(topic: &'a Topic, selectors: &[Selector]) -> Option<(usize, Option<&'a str>)> {
    if let Some(index) =
        selectors.iter().position(|s| matches!(s, Selector::Topic(t) if t == topic))
    {
        return Some((index, None));
    }
    selectors.iter().enumerate().find_map(|(index, selector)| {
        let prefix = selector.prefix()?;
        topic.as_str().strip_prefix(prefix).map(|rest| (index, Some(rest)))
    })
}

/// What a broker knows of its topics, for subscriptions by prefix: the topics it holds, and
/// each topic as it is published to.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The topics starting with `prefix` that have messages (or had: a topic whose log was
    /// released may be left out).
    async fn topics(&self, prefix: &str) -> Result<Vec<Topic>>;

    /// Topics as they are published to (a topic may come more than once). A receiver that
    /// lags, or is told [`Listing::Relist`], reads [`topics`](Self::topics) again.
    fn published(&self) -> broadcast::Receiver<Listing>;
}

/// What a [`Directory`] tells those who follow prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// This topic was published to.
    Published(Topic),
    /// Topics may have been published unseen (the broker's notifications were away for a
    /// while): list them again.
    Relist,
}

/// What to follow on one connection.
#[derive(Debug, Clone)]
pub struct FollowRequest {
    /// The selectors, each with where it starts (a topic found by a prefix selector starts
    /// there too; one first published while the connection is open starts at its first
    /// message).
    pub selectors: Vec<(Selector, Cursor)>,
    /// Where a resumed connection stood: its topics go on from their positions, and a topic a
    /// prefix selects that is not in it is new since, so it starts at its first message.
    pub resume: Option<CursorSet>,
    /// The most topics the connection may follow; more is an error that says so.
    pub max_topics: usize,
}

impl FollowRequest {
    /// The topics it names (not those its prefixes select), in order.
    pub fn named_topics(&self) -> impl Iterator<Item = &Topic> {
        self.selectors.iter().filter_map(|(selector, _)| match selector {
            Selector::Topic(topic) => Some(topic),
            Selector::Prefix(_) => None,
        })
    }

    /// The selectors alone, in order: what the cursor set's text is relative to.
    pub fn keys(&self) -> Vec<Selector> {
        self.selectors.iter().map(|(s, _)| s.clone()).collect()
    }

    /// The topics it follows on `broker` now, each with where it starts (from the resumed set,
    /// else its selector's start; a prefix's topic new since the set, from its first message),
    /// at most `max_topics` of them: what [`follow`] subscribes to, for a reader that fetches
    /// instead (a page of many topics).
    pub async fn starts(&self, broker: &dyn Client) -> Result<Vec<(Topic, Cursor)>> {
        let directory = self.directory(broker)?;
        self.plan(directory.as_deref()).await
    }

    /// The broker's directory when a selector is a prefix; an error when it has none.
    fn directory(&self, broker: &dyn Client) -> Result<Option<Arc<dyn Directory>>> {
        if self.selectors.iter().all(|(s, _)| s.prefix().is_none()) {
            return Ok(None);
        }
        let directory = broker.directory().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "prefix subscriptions need a broker that lists its topics, or a client \
                     that follows prefixes itself, and {} is neither",
                    broker.capabilities().name
                ),
            )
            .with_retryable(false)
        })?;
        Ok(Some(directory))
    }

    async fn plan(&self, directory: Option<&dyn Directory>) -> Result<Vec<(Topic, Cursor)>> {
        let mut starts: Vec<(Topic, Cursor)> = Vec::new();
        let add = |topic: Topic, start: Cursor, starts: &mut Vec<(Topic, Cursor)>| {
            if !starts.iter().any(|(t, _)| *t == topic) {
                starts.push((topic, start));
            }
        };
        let resumed = |topic: &Topic, fallback: Cursor| {
            self.resume.as_ref().and_then(|set| set.get(topic)).unwrap_or(fallback)
        };
        for (selector, start) in &self.selectors {
            match selector {
                Selector::Topic(topic) => add(topic.clone(), resumed(topic, *start), &mut starts),
                Selector::Prefix(prefix) => {
                    let directory = directory.expect("a directory for prefixes");
                    // A topic new since the connection the set comes from starts at its first.
                    let new = if self.resume.is_some() { Cursor::Beginning } else { *start };
                    for topic in directory.topics(prefix).await? {
                        let start = resumed(&topic, new);
                        add(topic, start, &mut starts);
                    }
                    if let Some(set) = &self.resume {
                        for (topic, cursor) in set.iter() {
                            if selector.matches(topic) {
                                add(topic.clone(), cursor, &mut starts);
                            }
                        }
                    }
                }
            }
            if starts.len() > self.max_topics {
                return Err(too_many(starts.len(), self.max_topics));
            }
        }
        Ok(starts)
    }
}

/// Many topics' deliveries as one stream, each topic's in its order, with the [`CursorSet`]
/// that resumes them all. Made by [`follow`].
pub struct MultiSubscription {
    cursors: CursorSet,
    inner: BoxStream<'static, Result<Delivery>>,
}

impl MultiSubscription {
    /// Wraps a stream of many topics' deliveries that starts at `cursors` (what a client that
    /// multiplexes returns from [`Subscribe::subscribe_many`](crate::Subscribe)).
    pub fn new(
        cursors: CursorSet,
        stream: impl Stream<Item = Result<Delivery>> + Send + 'static,
    ) -> Self {
        Self { cursors, inner: Box::pin(stream) }
    }

    /// Where each topic stands after the last delivery yielded.
    pub fn cursors(&self) -> &CursorSet {
        &self.cursors
    }
}

impl fmt::Debug for MultiSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiSubscription").field("cursors", &self.cursors).finish_non_exhaustive()
    }
}

impl Stream for MultiSubscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(delivery))) = &polled {
            self.cursors.advance(delivery);
        }
        polled
    }
}

fn too_many(count: usize, max: usize) -> Error {
    Error::new(
        ErrorKind::BadRequest,
        format!("this would follow {count} topics on one connection, over the limit of {max}"),
    )
    .with_retryable(false)
}

/// Follows every topic `request` selects on `broker` (a broker or a client), as one stream: on
/// one connection when the client can ([`Subscribe::subscribe_many`](crate::Subscribe)),
/// else by merging one subscription per topic. Exact topics need nothing more than
/// [`Subscribe`](crate::Subscribe); prefixes need a [`Directory`] (or a client that follows
/// them itself).
pub async fn follow(broker: Arc<dyn Client>, request: FollowRequest) -> Result<MultiSubscription> {
    if let Some(multiplexed) = broker.subscribe_many(&request).await? {
        return Ok(multiplexed);
    }
    let prefixes: Vec<Arc<str>> =
        request.selectors.iter().filter_map(|(s, _)| s.prefix().map(Arc::from)).collect();
    let directory = request.directory(&*broker)?;
    // Watch before listing, so a topic first published in between is not missed.
    let published = directory.as_ref().map(|d| d.published());
    let starts = request.plan(directory.as_deref()).await?;
    let mut subscriptions = SubscriptionSet::new();
    let mut cursors = CursorSet::new();
    for (topic, start) in starts {
        let subscription = broker.subscribe(&topic, start).await?;
        cursors.set(topic, subscription.cursor());
        subscriptions.insert(subscription);
    }
    let state = Following {
        broker,
        selectors: request.selectors.iter().map(|(s, _)| s.clone()).collect(),
        prefixes,
        directory,
        published,
        subscriptions,
        max_topics: request.max_topics,
        failed: false,
    };
    Ok(MultiSubscription {
        cursors,
        inner: Box::pin(futures::stream::unfold(state, Following::next)),
    })
}

struct Following {
    broker: Arc<dyn Client>,
    selectors: Vec<Selector>,
    prefixes: Vec<Arc<str>>,
    directory: Option<Arc<dyn Directory>>,
    published: Option<broadcast::Receiver<Listing>>,
    subscriptions: SubscriptionSet,
    max_topics: usize,
    failed: bool,
}

impl Following {
    // Not an `async fn`: one taking `mut self` keeps the state twice in its future (the
    // argument, and the mutable binding it is moved into), and a waiting stream is this future.
    fn next(self) -> impl std::future::Future<Output = Option<(Result<Delivery>, Self)>> + Send {
        let mut this = self;
        async move {
            if this.failed {
                return None;
            }
            loop {
                let found = match this.published.as_mut() {
                    None => {
                        let (_, item) = this.subscriptions.next().await;
                        return this.yielded(item);
                    }
                    Some(published) => tokio::select! {
                        (_, item) = this.subscriptions.next() => return this.yielded(item),
                        topic = published.recv() => match topic {
                            Ok(Listing::Published(topic)) => vec![topic],
                            Ok(Listing::Relist) | Err(broadcast::error::RecvError::Lagged(_)) => {
                                let directory = this.directory.clone().expect("a directory");
                                let mut all = Vec::new();
                                for prefix in &this.prefixes {
                                    match directory.topics(prefix).await {
                                        Ok(topics) => all.extend(topics),
                                        Err(error) => return this.failed(error),
                                    }
                                }
                                all
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                this.published = None;
                                continue;
                            }
                        },
                    },
                };
                let mut seen = HashSet::new();
                for topic in found {
                    let wanted =
                        this.selectors.iter().any(|s| s.prefix().is_some() && s.matches(&topic));
                    if !wanted || this.subscriptions.contains(&topic) || !seen.insert(topic.clone())
                    {
                        continue;
                    }
                    if this.subscriptions.len() >= this.max_topics {
                        let error = too_many(this.subscriptions.len() + 1, this.max_topics);
                        return this.failed(error);
                    }
                    // New while the connection is open: from its first message.
                    match this.broker.subscribe(&topic, Cursor::Beginning).await {
                        Ok(subscription) => {
                            this.subscriptions.insert(subscription);
                        }
                        Err(error) => return this.failed(error),
                    }
                }
            }
        }
    }

    fn yielded(self, item: Option<Result<Delivery>>) -> Option<(Result<Delivery>, Self)> {
        match item {
            Some(Ok(delivery)) => Some((Ok(delivery), self)),
            Some(Err(error)) => self.failed(error),
            None => self.failed(Error::new(ErrorKind::Closed, "a topic's subscription ended")),
        }
    }

    fn failed(mut self, error: Error) -> Option<(Result<Delivery>, Self)> {
        self.failed = true;
        Some((Err(error), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selectors(texts: &[&str]) -> Vec<Selector> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn sets_round_trip_and_stay_short() {
        let keys: Vec<Selector> = (0..20).map(|n| format!("room.{n}").parse().unwrap()).collect();
        let (a, b) = (Epoch::from_u64(0xabc), Epoch::from_u64(0xdef));
        let mut set = CursorSet::new();
        for (n, key) in keys.iter().enumerate() {
            let Selector::Topic(topic) = key else { unreachable!() };
            let epoch = if n == 3 { b } else { a };
            set.set(topic.clone(), Cursor::After(epoch, Offset(1000 + n as u64)));
        }
        let text = set.encode(&keys);
        assert!(text.len() < 200, "{} bytes: {text}", text.len());
        assert!(text.contains(",3~0000000000000def-1003,"), "{text}");
        assert_eq!(CursorSet::parse(&text, &keys).unwrap(), set);
        assert_eq!(CursorSet::parse("@", &keys).unwrap(), CursorSet::new());
    }

    #[test]
    fn bad_sets_say_what_is_wrong() {
        let keys = selectors(&["a", "orders:*"]);
        let cases = [
            ("0~1", "starts with '@'"),
            ("@zz,0~1", "16 lowercase hex"),
            ("@,0~1", "without an epoch"),
            ("@0000000000000abc,0", "KEY~POSITION"),
            ("@0000000000000abc,7~1", "names no selector"),
            ("@0000000000000abc,0*x~1", "does not fit"),
            ("@0000000000000abc,1~1", "does not fit"),
            ("@0000000000000abc,1*b@d~1", "not allowed"),
            ("@0000000000000abc,0~1,0~2", "named twice"),
            ("@0000000000000abc,0~x", "expected"),
        ];
        for (text, why) in cases {
            let err = CursorSet::parse(text, &keys).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidCursor, "{text}");
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
        assert!(CursorSet::parse(&format!("@{}", ",".repeat(20_000)), &keys).is_err());
    }

    #[test]
    fn named_sets_resume_what_the_selectors_still_select() {
        let epoch = Epoch::from_u64(0xabc);
        let mut set = CursorSet::new();
        for (name, offset) in [("orders:eu", 3), ("ticker", 9), ("42", 1)] {
            set.set(name.parse().unwrap(), Cursor::After(epoch, Offset(offset)));
        }
        let text = set.encode_named();
        assert_eq!(text, "@=0000000000000abc,orders:eu~3,ticker~9,42~1");
        let all = selectors(&["orders:*", "ticker", "42"]);
        assert_eq!(CursorSet::parse_named(&text, &all).unwrap(), set, "any order of selectors");
        // A token that no longer grants `ticker`, in another order: the rest resume by name.
        let narrower = selectors(&["42", "orders:*"]);
        let resumed = CursorSet::parse_named(&text, &narrower).unwrap();
        assert_eq!(resumed.len(), 2);
        assert_eq!(resumed.get(&"ticker".parse().unwrap()), None);
        assert_eq!(resumed.get(&"42".parse().unwrap()), Some(Cursor::After(epoch, Offset(1))));
        // Each form is read by its own parser only, with an error that says which is which.
        let indexed = set.encode(&all);
        let err = CursorSet::parse_named(&indexed, &all).unwrap_err();
        assert!(err.to_string().contains("names its topics (@=…), not"), "{err}");
        let err = CursorSet::parse(&text, &all).unwrap_err();
        assert!(err.to_string().contains("this set names its topics"), "{err}");
        let err = CursorSet::parse_named("@=0000000000000abc,bad name~1", &all).unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert_eq!(CursorSet::parse_named("@=", &all).unwrap(), CursorSet::new());
    }

    #[test]
    fn before_moves_each_topic_back_before_its_first_pending_delivery() {
        use crate::message::{Gap, GapReason, OffsetRange, Publication};
        let epoch = Epoch::from_u64(9);
        let (a, b, c): (Topic, Topic, Topic) =
            ("a".parse().unwrap(), "b".parse().unwrap(), "c".parse().unwrap());
        let message = |topic: &Topic, offset| {
            Delivery::Message(Publication::new("m").into_message(
                topic.clone(),
                epoch,
                Offset(offset),
            ))
        };
        let gap = Delivery::Gap(Gap {
            topic: b.clone(),
            reason: GapReason::Retention,
            missed: Some(OffsetRange { first: Offset(3), last: Offset(7) }),
            cursor: Cursor::After(epoch, Offset(7)),
        });
        let mut after = CursorSet::new();
        after.set(a.clone(), Cursor::After(epoch, Offset(6)));
        after.set(b.clone(), Cursor::After(epoch, Offset(8)));
        after.set(c.clone(), Cursor::After(epoch, Offset(2)));
        let pending = [message(&a, 5), gap, message(&a, 6), message(&b, 8)];
        let before = after.before(&pending);
        assert_eq!(before.get(&a), Some(Cursor::After(epoch, Offset(4))));
        assert_eq!(before.get(&b), Some(Cursor::After(epoch, Offset(2))));
        assert_eq!(before.get(&c), Some(Cursor::After(epoch, Offset(2))), "nothing pending");
    }

    #[test]
    fn selectors_parse() {
        assert_eq!("*".parse::<Selector>().unwrap(), Selector::Prefix(Arc::from("")));
        assert!(matches!("a.b".parse::<Selector>().unwrap(), Selector::Topic(_)));
        for bad in ["a*b*", "*a", "a b*", "-a*", ""] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }
}
