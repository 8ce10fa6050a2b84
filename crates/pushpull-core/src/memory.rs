//! The embedded, in-process broker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use crate::cursor::{Cursor, Epoch, Offset};
use crate::error::{Error, ErrorKind, Result};
use crate::many::{Directory, Listing};
use crate::message::{
    Capabilities, Delivery, Gap, GapReason, Message, OffsetRange, Page, Publication, Receipt,
};
use crate::presence::{
    JOIN_EVENT, LEAVE_EVENT, Lease, Member, Members, Presence, PresenceSnapshot, PresenceStats,
};
use crate::rules::TopicRules;
use crate::topic::Topic;
use crate::traits::{Client, Fetch, Publish, Subscribe, Subscription};

/// The name the memory broker gives in errors and capabilities.
pub const NAME: &str = "memory";

/// How much of each topic's log is kept. A message leaves the log when any limit is passed;
/// a reader that was behind it gets a [`Gap`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Retention {
    /// The most messages kept per topic.
    pub max_messages: usize,
    /// The most payload bytes kept per topic.
    pub max_bytes: usize,
    /// The oldest a message may get, such as `"1h"`; absent keeps messages regardless of age.
    #[serde(
        with = "crate::duration_text::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_messages: 10_000, max_bytes: 64 * 1024 * 1024, max_age: None }
    }
}

/// Limits of a [`MemoryBroker`]: in a server's configuration, the keys of `[broker]` beside
/// `kind = "memory"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// What each topic keeps.
    pub retention: Retention,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// The most topics held at once (subscribing takes none: a topic exists from its first
    /// publish). When the table is full, topics idle for `idle_topic_timeout` are released to
    /// make room; if none is, publishing to one more fails.
    pub max_topics: usize,
    /// How long a topic must go without a publish, a fetch or a reader before it may be
    /// released when the table is full. Its messages go with it; its numbering does not: a
    /// reader that comes back gets a [`Gap`] for exactly what was released.
    #[serde(with = "crate::duration_text")]
    pub idle_topic_timeout: Duration,
    /// The most messages one fetch returns, whatever limit it asks for.
    pub max_page: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            max_payload: 4 * 1024 * 1024,
            max_topics: 10_000,
            idle_topic_timeout: Duration::from_secs(3600),
            max_page: 1_000,
        }
    }
}

impl MemoryConfig {
    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::new(ErrorKind::Config, msg));
        if self.retention.max_messages == 0 {
            return bad("retention.max_messages must be at least 1".into());
        }
        if self.max_payload == 0 {
            return bad("max_payload must be at least 1".into());
        }
        if self.retention.max_bytes < self.max_payload {
            return bad(format!(
                "retention.max_bytes ({}) must be at least max_payload ({}), \
                 or a largest message could never be kept",
                self.retention.max_bytes, self.max_payload
            ));
        }
        if self.max_topics == 0 || self.max_page == 0 {
            return bad("max_topics and max_page must be at least 1".into());
        }
        Ok(())
    }
}

/// A broker that keeps each topic's log in memory: the embedded default.
///
/// Each topic is one shared log (a ring of [`Message`]s whose payloads are shared `Bytes`)
/// and a wake-up signal. Subscribers own no queue: each holds a cursor into the log and reads
/// from it, so a slow subscriber costs no memory and, once retention passes it, gets a
/// [`Gap`]. A new broker has a new [`Epoch`], so cursors from an earlier incarnation give a
/// gap instead of silently restarting at offset 1.
///
/// Cloning is cheap and gives a handle to the same broker.
///
/// ```
/// # tokio_test_block_on(async {
/// use pushpull_core::{Cursor, Fetch, MemoryBroker, Publication, Publish, Topic};
/// let broker = MemoryBroker::new();
/// let topic = Topic::new("ticker").unwrap();
/// broker.publish(&topic, Publication::new("42.17")).await.unwrap();
/// let page = broker.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
/// assert_eq!(page.messages[0].payload, "42.17");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    epoch: Epoch,
    config: MemoryConfig,
    /// What each family of topics keeps, over `config.retention`.
    rules: TopicRules,
    /// What `TopicLog::touched` counts from.
    started: Instant,
    topics: RwLock<HashMap<Topic, Arc<TopicLog>>>,
    /// The next offset of each released topic, so that it numbers on where it stopped if it
    /// comes back (cursors stay exact). Bounded: when it is full, nothing more is released.
    released: Mutex<HashMap<Topic, u64>>,
    /// Wake-ups of topics that have subscribers but no log yet: subscribing takes no topic
    /// slot (a flood of subscriptions to made-up names cannot lock publishers out); the first
    /// publish adopts the wake-up, so those subscribers see its message.
    waiting: Mutex<HashMap<Topic, Room>>,
    /// Each topic as it gets a log (its first publish): what prefix subscriptions listen to.
    created: broadcast::Sender<Listing>,
    /// The members of each topic that has some. Held while a join or a leave is appended to
    /// the presence log, so a snapshot's members and cursor are read together.
    presence: Mutex<HashMap<Topic, HashMap<Arc<str>, Present>>>,
    /// Whether the task that ends lapsed leases runs.
    sweeping: std::sync::atomic::AtomicBool,
    /// How many of `topics` are presence logs (which take no topic slot).
    presence_logs: std::sync::atomic::AtomicUsize,
    /// Readers gone so far: a topic becomes releasable when its last reader goes.
    departures: AtomicU64,
    /// What the last look for idle topics in a full table found, when it found none: until a
    /// reader goes or the first unread topic has been idle long enough, a publish to a new
    /// topic is refused without looking again (a look walks the whole table under its lock).
    fruitless: Mutex<Option<Fruitless>>,
    /// Looks for idle topics made (for tests).
    #[cfg(test)]
    looks: AtomicU64,
}

/// A look for idle topics that found none.
#[derive(Clone, Copy)]
struct Fruitless {
    /// `departures` when it looked.
    departures: u64,
    /// When (in `TopicLog::touched`'s milliseconds) the first unread topic it saw is idle
    /// long enough to go.
    until: u64,
}

/// A member and when its lease lapses (`None`: held until it leaves).
struct Present {
    member: Member,
    until: Option<Instant>,
}

/// How often lapsed leases are looked for: a member whose lease ran out leaves within this.
const LEASE_SWEEP: Duration = Duration::from_secs(1);

struct TopicLog {
    topic: Topic,
    /// What it keeps (its rule's, resolved when it was created).
    retention: Retention,
    /// When it was last published to or fetched from, in milliseconds since the broker began.
    touched: AtomicU64,
    state: RwLock<LogState>,
    /// Carries the last offset; subscribers wait on it.
    tail: Arc<watch::Sender<u64>>,
    /// How many of the tail's receivers are relays (not counted as subscribers): shared with
    /// the relays, and with the waiting room whose wake-up the log adopted.
    relays: Arc<AtomicUsize>,
}

/// The waiting room of a topic without a log: the wake-up its readers wait on, and how many
/// of them are relays. The log made by the first publish adopts both.
struct Room {
    tail: Weak<watch::Sender<u64>>,
    relays: Arc<AtomicUsize>,
}

struct LogState {
    entries: VecDeque<Message>,
    /// Idempotency keys of retained messages, to answer a retried publish with its first receipt.
    keys: HashMap<Arc<str>, u64>,
    /// The same keys in offset order, to forget them as their messages are evicted.
    keyed: VecDeque<(u64, Arc<str>)>,
    /// The offset of `entries[0]`, or of the next message when empty.
    first: u64,
    /// The offset the next message gets.
    next: u64,
    bytes: usize,
    /// When the newest message retention dropped was published: a `since:` reader that
    /// reaches back to it gets a gap. `None` when nothing was dropped (and for a log that
    /// numbers on after being released, whose older messages went with it).
    dropped_at: Option<SystemTime>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A broker with the default limits.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default()).expect("the default config is valid")
    }

    /// A broker with the given limits.
    pub fn with_config(config: MemoryConfig) -> Result<Self> {
        Self::with_rules(config, TopicRules::default())
    }

    /// A broker with the given limits, each topic keeping what its rule (a `[[topics]]`
    /// entry) says, resolved when the topic gets its log.
    pub fn with_rules(config: MemoryConfig, rules: TopicRules) -> Result<Self> {
        config.validate()?;
        rules.check(&config.retention, config.max_payload)?;
        let shared = Shared {
            epoch: Epoch::random(),
            rules,
            config,
            started: Instant::now(),
            topics: RwLock::new(HashMap::new()),
            released: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            created: broadcast::Sender::new(1024),
            presence: Mutex::new(HashMap::new()),
            sweeping: std::sync::atomic::AtomicBool::new(false),
            presence_logs: std::sync::atomic::AtomicUsize::new(0),
            departures: AtomicU64::new(0),
            fruitless: Mutex::new(None),
            #[cfg(test)]
            looks: AtomicU64::new(0),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The incarnation of every log in this broker.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    /// The limits in force.
    pub fn config(&self) -> &MemoryConfig {
        &self.shared.config
    }

    /// How many topics the broker holds.
    pub fn topic_count(&self) -> usize {
        self.shared.topics.read().expect("topics lock").len()
    }

    /// How many subscriptions are reading the broker's logs right now.
    pub fn subscriber_count(&self) -> usize {
        let topics = self.shared.topics.read().expect("topics lock");
        let logged: usize = topics.values().map(|log| log.tail.receiver_count()).sum();
        let waiting = self.shared.waiting.lock().expect("waiting lock");
        logged
            + waiting
                .values()
                .filter_map(|room| room.tail.upgrade())
                .map(|t| t.receiver_count())
                .sum::<usize>()
    }

    fn existing(&self, topic: &Topic) -> Option<Arc<TopicLog>> {
        let log = self.shared.topics.read().expect("topics lock").get(topic).cloned()?;
        log.touched.store(self.now_millis(), Ordering::Relaxed);
        Some(log)
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Releases topics nobody has touched for `idle_topic_timeout` and nobody reads, keeping
    /// their next offsets. Called with the table full.
    fn release_idle(&self, topics: &mut HashMap<Topic, Arc<TopicLog>>) {
        let config = &self.shared.config;
        let idle = u64::try_from(config.idle_topic_timeout.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_millis();
        // Read before looking: a reader that goes during the look makes the next one count.
        let departures = self.shared.departures.load(Ordering::Acquire);
        let mut fruitless = self.shared.fruitless.lock().expect("fruitless lock");
        if let Some(last) = *fruitless
            && last.departures == departures
            && now < last.until
        {
            return;
        }
        #[cfg(test)]
        self.shared.looks.fetch_add(1, Ordering::Relaxed);
        let mut released = self.shared.released.lock().expect("released lock");
        let room = (config.max_topics.saturating_mul(8)).saturating_sub(released.len());
        // The first moment an unread topic seen now could go, if none can yet.
        let mut until = u64::MAX;
        let idle_topics: Vec<Topic> = topics
            .iter()
            .filter(|(topic, log)| {
                // No reader. (Presence logs take no topic slot: releasing one makes no room.)
                if topic.is_presence() || log.tail.receiver_count() != 0 {
                    return false;
                }
                let touched = log.touched.load(Ordering::Relaxed);
                // Only the table holds it (no publish in flight), and idle long enough.
                let ready = Arc::strong_count(log) == 1 && now.saturating_sub(touched) >= idle;
                if !ready {
                    until = until.min(touched.saturating_add(idle).max(now + 1));
                }
                ready
            })
            .map(|(topic, _)| topic.clone())
            .take(room)
            .collect();
        *fruitless = idle_topics.is_empty().then_some(Fruitless { departures, until });
        for topic in idle_topics {
            if let Some(log) = topics.remove(&topic) {
                let next = log.state.read().expect("log lock").next;
                released.insert(topic, next);
            }
        }
    }

    fn log(&self, topic: &Topic) -> Result<Arc<TopicLog>> {
        if let Some(log) = self.existing(topic) {
            return Ok(log);
        }
        let mut topics = self.shared.topics.write().expect("topics lock");
        if let Some(log) = topics.get(topic) {
            return Ok(log.clone());
        }
        // Presence logs take no topic slot, so subscriptions cannot fill the table and lock
        // publishers out; they have a table as large of their own, where those nobody reads
        // make room.
        let presence = topic.is_presence();
        let full = |topics: &HashMap<Topic, Arc<TopicLog>>| {
            let logs = self.shared.presence_logs.load(Ordering::Relaxed);
            let held = if presence { logs } else { topics.len() - logs };
            (held >= self.shared.config.max_topics).then_some(held)
        };
        if full(&topics).is_some() {
            match presence {
                true => self.release_presence_logs(&mut topics),
                false => self.release_idle(&mut topics),
            }
        }
        if let Some(held) = full(&topics) {
            let what = if presence { "presence logs" } else { "topics" };
            return Err(Error::new(
                ErrorKind::Backend,
                format!("the broker already holds its maximum of {held} {what}"),
            )
            // Presence logs make room as their readers go.
            .with_retryable(presence)
            .with_transport(NAME));
        }
        // Subscribers that came before the first publish wait on this wake-up.
        let waited = self.shared.waiting.lock().expect("waiting lock").remove(topic);
        let room = waited.and_then(|room| Some((room.tail.upgrade()?, room.relays)));
        let next = self.shared.released.lock().expect("released lock").remove(topic);
        let retention = self.retention_of(topic);
        let log = Arc::new(TopicLog::with_tail(topic.clone(), retention, room, next.unwrap_or(1)));
        log.touched.store(self.now_millis(), Ordering::Relaxed);
        topics.insert(topic.clone(), log.clone());
        if topic.is_presence() {
            self.shared.presence_logs.fetch_add(1, Ordering::Relaxed);
        }
        drop(topics);
        // Nobody listening is not an error. Presence logs are no topic a prefix selects.
        if !topic.is_presence() {
            let _ = self.shared.created.send(Listing::Published(topic.clone()));
        }
        Ok(log)
    }

    /// The page of a topic without a log: empty at offset 0, or where it was released.
    fn empty_page(&self, topic: &Topic, cursor: Cursor) -> Result<Page> {
        let next = self.shared.released.lock().expect("released lock").get(topic).copied();
        let retention = self.retention_of(topic);
        let log = TopicLog::with_tail(topic.clone(), retention, None, next.unwrap_or(1));
        log.read(self.shared.epoch, &log.retention, cursor, 0)
    }

    /// What `topic` keeps: its rule's retention over the broker's.
    fn retention_of(&self, topic: &Topic) -> Retention {
        let config = &self.shared.config;
        if self.shared.rules.is_empty() {
            return config.retention.clone();
        }
        self.shared.rules.policy(topic, &config.retention, config.max_payload).retention
    }
}

impl TopicLog {
    /// An empty log whose first message gets offset `next`, whose wake-up and count of relays
    /// are `room`'s (those its subscribers were waiting on before it existed) or new ones.
    fn with_tail(
        topic: Topic,
        retention: Retention,
        room: Option<(Arc<watch::Sender<u64>>, Arc<AtomicUsize>)>,
        next: u64,
    ) -> Self {
        let state = LogState {
            entries: VecDeque::new(),
            keys: HashMap::new(),
            keyed: VecDeque::new(),
            first: next,
            next,
            bytes: 0,
            dropped_at: (next > 1).then_some(SystemTime::now()),
        };
        let (tail, relays) = room.unwrap_or_else(|| {
            (Arc::new(watch::Sender::new(next - 1)), Arc::new(AtomicUsize::new(0)))
        });
        Self {
            topic,
            retention,
            touched: AtomicU64::new(0),
            state: RwLock::new(state),
            tail,
            relays,
        }
    }

    fn append(&self, epoch: Epoch, retention: &Retention, publication: Publication) -> Receipt {
        let mut state = self.state.write().expect("log lock");
        let key = publication.key().map(Arc::<str>::from);
        if let Some(receipt) = key.as_ref().and_then(|key| state.receipt_for(key, epoch)) {
            return receipt;
        }
        let offset = Offset(state.next);
        if let Some(key) = key {
            state.keys.insert(key.clone(), offset.0);
            state.keyed.push_back((offset.0, key));
        }
        let message = publication.into_message(self.topic.clone(), epoch, offset);
        let mut receipt = Receipt {
            topic: message.topic.clone(),
            epoch,
            offset,
            timestamp: message.timestamp,
            subscribers: None,
        };
        state.bytes += message.payload.len();
        state.entries.push_back(message);
        state.next += 1;
        state.evict(retention, SystemTime::now());
        drop(state);
        self.tail.send_replace(offset.0);
        // Every subscription to the topic holds a receiver of its tail; relays do not count.
        let relays = self.relays.load(Ordering::Acquire);
        receipt.subscribers = Some(self.tail.receiver_count().saturating_sub(relays) as u64);
        receipt
    }

    /// Reads up to `limit` messages after `cursor`; `limit` 0 only resolves the cursor.
    fn read(
        &self,
        epoch: Epoch,
        retention: &Retention,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Page> {
        let state = self.state.read().expect("log lock");
        // The clock is read only when messages expire by age.
        let first = match retention.max_age {
            None => state.first,
            Some(_) => state.first_retained(retention, SystemTime::now()),
        };
        let last = state.next - 1;
        let cursor = state.resolve(epoch, cursor);
        let mut gap = None;
        let position = match cursor {
            Cursor::Beginning => first - 1,
            Cursor::Latest | Cursor::Last(_) | Cursor::Since(_) => last,
            Cursor::After(e, Offset(offset)) if e == epoch => {
                if offset > last {
                    return Err(Error::new(
                        ErrorKind::InvalidCursor,
                        format!(
                            "cursor {cursor} is ahead of topic {}, whose last offset is {last}",
                            self.topic
                        ),
                    )
                    .with_transport(NAME));
                }
                if offset + 1 < first {
                    gap = Some(Gap {
                        topic: self.topic.clone(),
                        reason: GapReason::Retention,
                        missed: Some(OffsetRange {
                            first: Offset(offset + 1),
                            last: Offset(first - 1),
                        }),
                        cursor: Cursor::After(epoch, Offset(first - 1)),
                    });
                    first - 1
                } else {
                    offset
                }
            }
            Cursor::After(previous, _) => {
                gap = Some(Gap {
                    topic: self.topic.clone(),
                    reason: GapReason::EpochChanged { previous },
                    missed: (first > 1)
                        .then(|| OffsetRange { first: Offset(1), last: Offset(first - 1) }),
                    cursor: Cursor::After(epoch, Offset(first - 1)),
                });
                first - 1
            }
        };
        let skip = (position + 1 - state.first) as usize;
        let messages: Vec<Message> = state.entries.iter().skip(skip).take(limit).cloned().collect();
        let next = Cursor::After(epoch, Offset(position + messages.len() as u64));
        Ok(Page { gap, messages, next })
    }
}

impl LogState {
    /// Resolves the history starts `last:N` and `since:TIME` to a position in this log, which
    /// reading then treats like any other: one behind what retention kept gives a gap.
    fn resolve(&self, epoch: Epoch, cursor: Cursor) -> Cursor {
        let last = self.next - 1;
        match cursor {
            Cursor::Last(count) => Cursor::After(epoch, Offset(last.saturating_sub(count))),
            Cursor::Since(millis) => {
                let time = crate::message::time_from_millis(millis);
                // Messages are stored in the order they were accepted, so by time.
                let before = self.entries.partition_point(|m| m.timestamp < time);
                // Those expired by age but not yet dropped are still here to say exactly where
                // TIME falls among them (a gap follows if it is before `first`); of those
                // dropped, only the newest one's time is kept, so all of them may be missed
                // when it is at or after TIME.
                if before == 0 && self.dropped_at.is_some_and(|at| at >= time) {
                    return Cursor::After(epoch, Offset(0));
                }
                Cursor::After(epoch, Offset(self.first - 1 + before as u64))
            }
            other => other,
        }
    }

    /// The receipt of the retained message published with `key`, if any.
    fn receipt_for(&self, key: &str, epoch: Epoch) -> Option<Receipt> {
        let offset = *self.keys.get(key)?;
        let message = self.entries.get(usize::try_from(offset.checked_sub(self.first)?).ok()?)?;
        Some(Receipt {
            topic: message.topic.clone(),
            epoch,
            offset: message.offset,
            timestamp: message.timestamp,
            subscribers: None,
        })
    }

    /// The offset of the first message that is still within the age limit.
    fn first_retained(&self, retention: &Retention, now: SystemTime) -> u64 {
        let Some(max_age) = retention.max_age else {
            return self.first;
        };
        let expired = self
            .entries
            .iter()
            .take_while(|m| now.duration_since(m.timestamp).is_ok_and(|age| age > max_age))
            .count();
        self.first + expired as u64
    }

    fn evict(&mut self, retention: &Retention, now: SystemTime) {
        let first_young = self.first_retained(retention, now);
        while let Some(oldest) = self.entries.front() {
            let over = self.entries.len() > retention.max_messages
                || self.bytes > retention.max_bytes
                || oldest.offset.0 < first_young;
            if !over {
                break;
            }
            self.bytes -= oldest.payload.len();
            self.dropped_at = Some(oldest.timestamp);
            self.entries.pop_front();
            self.first += 1;
        }
        while self.keyed.front().is_some_and(|(offset, _)| *offset < self.first) {
            if let Some((_, key)) = self.keyed.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

#[async_trait]
impl Publish for MemoryBroker {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt> {
        publication.validate(self.shared.config.max_payload).map_err(|e| e.with_transport(NAME))?;
        if topic.is_presence() {
            return Err(crate::presence::written_by_the_server(topic).with_transport(NAME));
        }
        let log = self.log(topic)?;
        Ok(log.append(self.shared.epoch, &log.retention, publication))
    }
}

#[async_trait]
impl Fetch for MemoryBroker {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page> {
        if limit == 0 {
            return Err(Error::bad_request("limit must be at least 1").with_transport(NAME));
        }
        let limit = limit.min(self.shared.config.max_page);
        match self.existing(topic) {
            Some(log) => log.read(self.shared.epoch, &log.retention, cursor, limit),
            None => self.empty_page(topic, cursor),
        }
    }
}

/// How many messages a subscriber copies out of the log per read (handles, not payloads).
const SUBSCRIBER_BATCH: usize = 64;

#[async_trait]
impl Subscribe for MemoryBroker {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
        self.reader(topic, cursor, false)
    }

    async fn relay(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
        self.reader(topic, cursor, true)
    }

    /// A reader that returned pending waits on its topic's wake-up and holds no lock.
    fn parks(&self) -> bool {
        true
    }

    fn directory(&self) -> Option<Arc<dyn Directory>> {
        Some(Arc::new(self.clone()))
    }
}

impl MemoryBroker {
    /// A subscription to `topic` from `cursor`; a `relay` is not counted as a subscriber.
    fn reader(&self, topic: &Topic, cursor: Cursor, relay: bool) -> Result<Subscription> {
        let epoch = self.shared.epoch;
        // A topic nobody published to gets no log (and takes no slot): the subscriber waits in
        // the waiting room for the publish that creates it.
        let (log, tail, relays) = match self.existing(topic) {
            Some(log) => {
                let (tail, relays) = (log.tail.clone(), log.relays.clone());
                (Some(log), tail, relays)
            }
            None => {
                let (tail, relays) = self.waiting_room(topic);
                (None, tail, relays)
            }
        };
        let retention = match &log {
            Some(log) => log.retention.clone(),
            None => self.retention_of(topic),
        };
        // Resolve the cursor now, so `Latest` means "after what exists when subscribe returns"
        // and a bad cursor fails here rather than in the stream.
        let start = match &log {
            Some(log) => log.read(epoch, &retention, cursor, 0)?,
            None => self.empty_page(topic, cursor)?,
        };
        // A gap at the start (retention, or a cursor of another epoch) is the first delivery,
        // at once: the reader learns that history was lost even if nothing new is published.
        // The subscription's own cursor stays where it started until the gap is delivered, so
        // a resume before that gets the gap again.
        let (position, ready) = match start.gap {
            Some(gap) => (start.next, VecDeque::from([Delivery::Gap(gap)])),
            None => (start.next, VecDeque::new()),
        };
        let resume_from = match ready.front() {
            Some(Delivery::Gap(gap)) => gap.resumes_from(cursor),
            _ => position,
        };
        // Counted where its wake-up's receivers are: the log's, or the waiting room's (which
        // the log adopts).
        let relays = relay.then(|| {
            relays.fetch_add(1, Ordering::AcqRel);
            relays
        });
        let reader = Reader {
            relays,
            broker: self.clone(),
            topic: topic.clone(),
            log,
            epoch,
            retention,
            tail: tail.subscribe(),
            waiting: Some(tail),
            position,
            ready,
            failed: false,
        };
        let stream = futures::stream::unfold(reader, Reader::next);
        Ok(Subscription::new(topic.clone(), resume_from, stream))
    }
}

#[async_trait]
impl Directory for MemoryBroker {
    async fn topics(&self, prefix: &str) -> Result<Vec<Topic>> {
        let topics = self.shared.topics.read().expect("topics lock");
        Ok(topics
            .keys()
            .filter(|t| t.as_str().starts_with(prefix) && !t.is_presence())
            .cloned()
            .collect())
    }

    fn published(&self) -> broadcast::Receiver<Listing> {
        self.shared.created.subscribe()
    }
}

impl MemoryBroker {
    /// The wake-up of a topic without a log, shared by everyone waiting for it.
    /// And the count of relays among them.
    fn waiting_room(&self, topic: &Topic) -> (Arc<watch::Sender<u64>>, Arc<AtomicUsize>) {
        let mut waiting = self.shared.waiting.lock().expect("waiting lock");
        if let Some(room) = waiting.get(topic)
            && let Some(tail) = room.tail.upgrade()
        {
            return (tail, room.relays.clone());
        }
        // Forget rooms nobody waits in any more, now and then: when the map has doubled.
        if waiting.len().is_power_of_two() {
            waiting.retain(|_, room| room.tail.strong_count() > 0);
        }
        let (tail, relays) = (Arc::new(watch::Sender::new(0)), Arc::new(AtomicUsize::new(0)));
        let room = Room { tail: Arc::downgrade(&tail), relays: relays.clone() };
        waiting.insert(topic.clone(), room);
        (tail, relays)
    }
}

/// One subscriber's state: a cursor into the shared log and a handful of message handles.
struct Reader {
    broker: MemoryBroker,
    topic: Topic,
    /// The topic's log, once it has one.
    log: Option<Arc<TopicLog>>,
    /// Keeps the waiting room's wake-up alive until the log exists.
    waiting: Option<Arc<watch::Sender<u64>>>,
    epoch: Epoch,
    retention: Retention,
    tail: watch::Receiver<u64>,
    position: Cursor,
    /// Deliveries read but not yet yielded: at most [`SUBSCRIBER_BATCH`] shared handles.
    ready: VecDeque<Delivery>,
    failed: bool,
    /// A relay's count (its log's, or its waiting room's), in which it is counted instead of
    /// as a subscriber.
    relays: Option<Arc<AtomicUsize>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(relays) = &self.relays {
            relays.fetch_sub(1, Ordering::AcqRel);
        }
        // Its topic may be releasable now.
        self.broker.shared.departures.fetch_add(1, Ordering::Release);
    }
}

impl Reader {
    // Not an `async fn`: one taking `mut self` keeps the state twice in its future (the
    // argument, and the mutable binding it is moved into), and a waiting stream is this future.
    fn next(self) -> impl std::future::Future<Output = Option<(Result<Delivery>, Self)>> + Send {
        let mut this = self;
        async move {
            loop {
                if let Some(delivery) = this.ready.pop_front() {
                    return Some((Ok(delivery), this));
                }
                if this.failed {
                    return None;
                }
                // Mark the tail seen before reading, so a publish after the read wakes us.
                this.tail.borrow_and_update();
                if this.log.is_none() {
                    match this.broker.existing(&this.topic) {
                        Some(log) => {
                            // The log adopted the waiting room's wake-up, unless it was created
                            // just before the room: follow the log's own from now on.
                            if !Arc::ptr_eq(&log.tail, this.waiting.as_ref().expect("waiting")) {
                                this.tail = log.tail.subscribe();
                                // A relay is counted with the receivers it is one of.
                                if let Some(relays) = &mut this.relays {
                                    relays.fetch_sub(1, Ordering::AcqRel);
                                    log.relays.fetch_add(1, Ordering::AcqRel);
                                    *relays = log.relays.clone();
                                }
                            }
                            this.log = Some(log);
                            this.waiting = None;
                            continue;
                        }
                        None => {
                            this.tail.changed().await.ok()?;
                            continue;
                        }
                    }
                }
                // The page is read and spent in this block: the wait below keeps no room for it.
                let caught_up = {
                    let log = this.log.as_ref().expect("the log exists now");
                    match log.read(this.epoch, &this.retention, this.position, SUBSCRIBER_BATCH) {
                        Err(err) => {
                            this.failed = true;
                            return Some((Err(err), this));
                        }
                        Ok(page) => {
                            this.position = page.next;
                            let caught_up = page.is_empty();
                            this.ready.extend(page.into_deliveries());
                            caught_up
                        }
                    }
                };
                if caught_up {
                    this.tail.changed().await.ok()?;
                }
            }
        }
    }
}

impl Client for MemoryBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true).with_max_payload(self.shared.config.max_payload)
    }

    fn presence(&self) -> Option<&dyn Presence> {
        Some(self)
    }

    fn members(&self) -> Option<&dyn Members> {
        Some(self)
    }
}

type MemberTable = HashMap<Arc<str>, Present>;

impl MemoryBroker {
    /// Appends a join or a leave of `member` to `topic`'s presence log. Called with the
    /// presence lock held.
    fn append_presence(&self, topic: &Topic, event: &str, member: &Member) -> Result<()> {
        let log = self.log(&topic.presence())?;
        let publication =
            Publication::new(member.to_json()).event(event).content_type("application/json");
        log.append(self.shared.epoch, &log.retention, publication);
        Ok(())
    }

    /// Makes room for one more presence log when they are `max_topics`: releases those nobody
    /// reads (their numbering kept: a reader that comes back gets a gap, and takes a new
    /// snapshot). Subscriptions to made-up topics so cannot fill memory, nor lock anyone out.
    fn release_presence_logs(&self, topics: &mut HashMap<Topic, Arc<TopicLog>>) {
        let mut released = self.shared.released.lock().expect("released lock");
        let room = (self.shared.config.max_topics.saturating_mul(8)).saturating_sub(released.len());
        let unread: Vec<Topic> = topics
            .iter()
            .filter(|(topic, log)| {
                topic.is_presence() && Arc::strong_count(log) == 1 && log.tail.receiver_count() == 0
            })
            .map(|(topic, _)| topic.clone())
            .take(room)
            .collect();
        for topic in unread {
            if let Some(log) = topics.remove(&topic) {
                self.shared.presence_logs.fetch_sub(1, Ordering::Relaxed);
                released.insert(topic, log.state.read().expect("log lock").next);
            }
        }
    }

    /// Ends the members of `topic` whose lease lapsed by `now`, each with a leave.
    fn lapse(&self, topic: &Topic, members: &mut MemberTable, now: Instant) {
        let lapsed: Vec<Arc<str>> = members
            .iter()
            .filter(|(_, present)| present.until.is_some_and(|until| until <= now))
            .map(|(client, _)| client.clone())
            .collect();
        for client in lapsed {
            if let Some(present) = members.remove(&client)
                && let Err(error) = self.append_presence(topic, LEAVE_EVENT, &present.member)
            {
                tracing::warn!(%topic, %error, "a lapsed member's leave could not be written");
            }
        }
    }

    /// Ends every lapsed lease; `false` once no member has a lease left.
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut presence = self.shared.presence.lock().expect("presence lock");
        let mut leased = false;
        presence.retain(|topic, members| {
            self.lapse(topic, members, now);
            leased |= members.values().any(|present| present.until.is_some());
            !members.is_empty()
        });
        leased
    }

    /// Starts the task that ends lapsed leases, unless it runs. It stops with the broker, or
    /// once no member has a lease (the next leased join starts it again).
    fn start_sweeping(&self) {
        if self.shared.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.sweeping.store(false, Ordering::Release);
            return;
        };
        let shared = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(LEASE_SWEEP).await;
                let Some(shared) = shared.upgrade() else { return };
                let broker = MemoryBroker { shared };
                if !broker.sweep() {
                    broker.shared.sweeping.store(false, Ordering::Release);
                    // A leased join between the sweep and the store saw the task running.
                    if broker.sweep() && !broker.shared.sweeping.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    return;
                }
            }
        });
    }

    /// The presence log's cursor now.
    fn presence_cursor(&self, topic: &Topic) -> Result<Cursor> {
        let presence = topic.presence();
        let page = match self.existing(&presence) {
            Some(log) => log.read(self.shared.epoch, &log.retention, Cursor::Latest, 0)?,
            None => self.empty_page(&presence, Cursor::Latest)?,
        };
        Ok(page.next)
    }
}

#[async_trait]
impl Presence for MemoryBroker {
    async fn snapshot(&self, topic: &Topic) -> Result<PresenceSnapshot> {
        crate::presence::check_has_members(topic).map_err(|e| e.with_transport(NAME))?;
        let mut presence = self.shared.presence.lock().expect("presence lock");
        let members = match presence.get_mut(topic) {
            Some(members) => {
                self.lapse(topic, members, Instant::now());
                members.values().map(|present| present.member.clone()).collect()
            }
            None => Vec::new(),
        };
        let cursor = self.presence_cursor(topic)?;
        Ok(PresenceSnapshot::new(topic.clone(), members, cursor))
    }

    async fn stats(&self, topic: &Topic) -> Result<PresenceStats> {
        crate::presence::check_has_members(topic).map_err(|e| e.with_transport(NAME))?;
        let mut presence = self.shared.presence.lock().expect("presence lock");
        Ok(match presence.get_mut(topic) {
            Some(members) => {
                self.lapse(topic, members, Instant::now());
                PresenceStats::of(members.values().map(|present| &present.member))
            }
            None => PresenceStats::new(0, 0),
        })
    }
}

#[async_trait]
impl Members for MemoryBroker {
    async fn join(
        &self,
        topic: &Topic,
        member: &Member,
        lease: Lease,
        max_members: usize,
    ) -> Result<()> {
        crate::presence::check_has_members(topic).map_err(|e| e.with_transport(NAME))?;
        let until = match lease {
            Lease::Held => None,
            Lease::For(lease) => Some(Instant::now() + lease),
        };
        let mut presence = self.shared.presence.lock().expect("presence lock");
        let members = presence.entry(topic.clone()).or_default();
        if let Some(present) = members.get_mut(member.client.as_str()) {
            present.until = until;
        } else if members.len() >= max_members {
            let full = crate::presence::members_full(topic, max_members).with_transport(NAME);
            if members.is_empty() {
                presence.remove(topic);
            }
            return Err(full);
        } else {
            if let Err(error) = self.append_presence(topic, JOIN_EVENT, member) {
                if members.is_empty() {
                    presence.remove(topic);
                }
                return Err(error);
            }
            members.insert(
                Arc::from(member.client.as_str()),
                Present { member: member.clone(), until },
            );
        }
        drop(presence);
        if until.is_some() {
            self.start_sweeping();
        }
        Ok(())
    }

    async fn leave(&self, topic: &Topic, client: &str) -> Result<()> {
        let mut presence = self.shared.presence.lock().expect("presence lock");
        let Some(members) = presence.get_mut(topic) else { return Ok(()) };
        let Some(present) = members.remove(client) else { return Ok(()) };
        if members.is_empty() {
            presence.remove(topic);
        }
        self.append_presence(topic, LEAVE_EVENT, &present.member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full table whose topics all have readers has nothing to release: a publish to a new
    /// topic is refused, and it looked through the whole table to find that out, under the
    /// table's lock, every time (at 19,000 topics, 9,000 refusals cost 350–410 µs of server
    /// CPU each). It looks again only when a reader has gone or an unread topic's idle time
    /// is up (that second way, and the release itself, are in tests/topics.rs).
    #[tokio::test]
    async fn a_full_table_is_looked_through_again_only_when_something_could_go() {
        let config = MemoryConfig {
            max_topics: 3,
            idle_topic_timeout: Duration::from_secs(3600),
            ..MemoryConfig::default()
        };
        let broker = MemoryBroker::with_config(config).expect("a broker");
        let looks = || broker.shared.looks.load(Ordering::Relaxed);
        let mut readers = Vec::new();
        for name in ["a", "b", "c"] {
            let topic: Topic = name.parse().expect("a topic");
            broker.publish(&topic, Publication::new("x")).await.expect("room");
            readers.push(broker.subscribe(&topic, Cursor::Latest).await.expect("a reader"));
        }
        let fresh: Topic = "fresh".parse().expect("a topic");
        for _ in 0..100 {
            let refused = broker.publish(&fresh, Publication::new("x")).await;
            assert!(refused.is_err(), "the table is full of read topics");
        }
        assert_eq!(looks(), 1, "one look found nothing; the 99 refusals after it did not look");

        // A reader goes: its topic may be idle long enough, so the next refusal looks again
        // (and finds it read an instant ago), and the ones after it do not.
        readers.pop();
        for _ in 0..10 {
            assert!(broker.publish(&fresh, Publication::new("x")).await.is_err());
        }
        assert_eq!(looks(), 2, "one look after the reader went");
        assert_eq!(broker.topic_count(), 3);
    }

    /// Every subscriber waits in its reader's `next` future, so that future must keep the
    /// reader and its wake-up, nothing else: an `async fn next(mut self)` kept the reader
    /// twice (the argument and the binding), and the page it found empty (twice) beside.
    #[test]
    fn a_waiting_reader_keeps_its_state_once() {
        let broker = MemoryBroker::new();
        let topic: Topic = "t".parse().expect("a topic");
        let tail = Arc::new(watch::Sender::new(0));
        let reader = Reader {
            broker: broker.clone(),
            retention: broker.retention_of(&topic),
            topic,
            log: None,
            tail: tail.subscribe(),
            waiting: Some(tail),
            epoch: broker.epoch(),
            position: Cursor::Beginning,
            ready: VecDeque::new(),
            failed: false,
            relays: None,
        };
        let mut wake_up = reader.tail.clone();
        let awaited = std::mem::size_of_val(&wake_up.changed());
        let state = std::mem::size_of::<Reader>();
        let waiting = std::mem::size_of_val(&reader.next());
        assert!(
            waiting <= state + awaited + 32,
            "the reader is {state} bytes, its wake-up's future {awaited}, its future {waiting}"
        );
    }

    #[tokio::test]
    async fn a_relay_reads_the_topic_but_is_not_counted_as_a_subscriber() {
        let broker = MemoryBroker::new();
        let topic: Topic = "t".parse().expect("a topic");
        let first = broker.publish(&topic, Publication::new("1")).await.unwrap();
        let _subscriber = broker.subscribe(&topic, Cursor::Latest).await.unwrap();
        let mut relay = broker.relay(&topic, first.cursor()).await.unwrap();
        let second = broker.publish(&topic, Publication::new("2")).await.unwrap();
        assert_eq!(second.subscribers, Some(1), "the relay is not counted");
        let Some(Ok(Delivery::Message(message))) = futures::StreamExt::next(&mut relay).await
        else {
            panic!("the relay reads the topic")
        };
        assert_eq!(message.offset, second.offset);
        drop(relay);
        let third = broker.publish(&topic, Publication::new("3")).await.unwrap();
        assert_eq!(third.subscribers, Some(1), "nor uncounted twice once it is gone");
    }

    #[tokio::test]
    async fn a_relay_that_came_before_the_first_publish_is_not_counted_either() {
        let broker = MemoryBroker::new();
        let topic: Topic = "fresh".parse().expect("a topic");
        // Both wait for the publish that makes the topic's log.
        let subscriber = broker.subscribe(&topic, Cursor::Latest).await.unwrap();
        let mut relay = broker.relay(&topic, Cursor::Latest).await.unwrap();
        let first = broker.publish(&topic, Publication::new("1")).await.unwrap();
        assert_eq!(first.subscribers, Some(1), "the relay is not counted");
        let Some(Ok(Delivery::Message(message))) = futures::StreamExt::next(&mut relay).await
        else {
            panic!("the relay reads the topic")
        };
        assert_eq!(message.offset, first.offset);
        drop(relay);
        let second = broker.publish(&topic, Publication::new("2")).await.unwrap();
        assert_eq!(second.subscribers, Some(1), "nor uncounted twice once it is gone");
        drop(subscriber);
        let third = broker.publish(&topic, Publication::new("3")).await.unwrap();
        assert_eq!(third.subscribers, Some(0));
    }
}
