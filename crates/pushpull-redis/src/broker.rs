//! The broker: Publish, Fetch and Subscribe over Redis Streams.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt as _;
use pushpull_core::{
    Backoff, Capabilities, Client, Cursor, Delivery, Directory, Epoch, Error, ErrorKind, Fetch,
    Gap, GapReason, Message, Offset, OffsetRange, Page, Publication, Publish, Receipt, Retention,
    Subscribe, Subscription, Topic, TopicRules, millis_since_unix_epoch, time_from_millis,
};
use redis::Value;
use tokio::sync::watch;

use crate::NAME;
use crate::config::RedisConfig;
use crate::link::Link;
use crate::scripts;
use crate::wake::{self, Waker};

/// A broker whose logs live in Redis: every server process on the same Redis (and key prefix)
/// serves the same topics, with dense offsets whichever node publishes. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) link: Link,
    publish: redis::Script,
    read: redis::Script,
    waker: Arc<Waker>,
    windows: crate::cache::Windows,
    /// What each family of topics keeps, over `config.retention`.
    rules: TopicRules,
    /// Each topic's retention, resolved once (bounded: past it, resolved again).
    retention: std::sync::Mutex<std::collections::HashMap<Topic, Retention>>,
    /// The presence scripts and this node's members.
    pub(crate) presence: crate::presence::NodePresence,
}

/// The most topics whose retention is kept resolved.
const KEPT_RETENTIONS: usize = 100_000;

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("key_prefix", &self.inner.config.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Wake-ups a node received: see [`RedisBroker::wake_ups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WakeUps {
    /// On the channels of the topics this node's readers follow.
    pub topics: u64,
    /// On the channel every node hears (a log's first message).
    pub shared: u64,
}

/// Redis's error as pushpull's: a `backend` error a retry may fix.
pub(crate) fn backend(error: redis::RedisError) -> Error {
    Error::new(ErrorKind::Backend, format!("redis: {error}"))
        .with_retryable(true)
        .with_transport(NAME)
        .with_source(error)
}

pub(crate) fn protocol(why: &str) -> Error {
    Error::new(ErrorKind::Backend, format!("redis answered something unexpected: {why}"))
        .with_transport(NAME)
}

impl RedisBroker {
    /// A broker on the Redis at `config.url`. It connects lazily: a Redis that is down now
    /// makes the first operations fail with retryable `backend` errors, not this call. Call it
    /// within a tokio runtime: it starts the node's wake-up listener.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        Self::with_rules(config, TopicRules::default())
    }

    /// [`new`](Self::new), each topic keeping what its rule (a `[[topics]]` entry) says.
    pub fn with_rules(config: RedisConfig, rules: TopicRules) -> Result<Self, Error> {
        config.validate()?;
        rules.check(&config.retention, config.max_payload)?;
        let link = Link::open(&config)?;
        let waker = wake::start(&config)?;
        let windows = crate::cache::Windows::new(rules.max_messages(&config.retention));
        let inner = Inner {
            config,
            link,
            publish: scripts::publish(),
            read: scripts::read(),
            waker,
            windows,
            rules,
            retention: std::sync::Mutex::default(),
            presence: crate::presence::NodePresence::new(),
        };
        let broker = Self { inner: Arc::new(inner) };
        crate::presence::renew_in_background(&broker);
        Ok(broker)
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// State stored beside the logs (webhook endpoints), shared by every node on this Redis.
    pub fn shared_state(&self) -> crate::RedisSharedState {
        crate::RedisSharedState::new(self.inner.link.clone(), &self.inner.config.key_prefix)
    }

    /// How many subscriptions this node is serving right now.
    pub fn subscriber_count(&self) -> usize {
        self.inner.waker.readers()
    }

    /// How many wake-ups this node has received since it started: on the channels of the
    /// topics its readers follow, and on the channel shared by every node (which carries only
    /// each log's first message).
    pub fn wake_ups(&self) -> WakeUps {
        let (topics, shared) = self.inner.waker.received();
        WakeUps { topics, shared }
    }

    /// Whether Redis answers now (for a health check's "ready").
    pub async fn ping(&self) -> Result<(), Error> {
        let mut connection = self.inner.link.clone();
        redis::cmd("PING").query_async::<()>(&mut connection).await.map_err(backend)
    }

    /// Runs a script, once more after a dropped connection (the connection manager reconnects
    /// in the background) or a `READONLY` answer: the scripts are safe to repeat, a publish
    /// because it carries an idempotency key.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            let mut connection = self.inner.link.clone();
            match invocation.invoke_async(&mut connection).await {
                Ok(value) => return Ok(value),
                // A replica that was this slot's master (on a cluster, the connection is made
                // again with a fresh slot map; the script wrote nothing there).
                Err(error)
                    if attempt < 2
                        && (error.is_connection_dropped()
                            || error.is_io_error()
                            || error.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    /// Runs a publish script, then `WAIT`s for `replicas` of the topic's master to have it:
    /// on one Redis over the same connection, on a cluster over the connection to the master
    /// that ran the script.
    async fn invoke_and_wait(
        &self,
        topic: &Topic,
        invocation: &redis::ScriptInvocation<'_>,
        replicas: u32,
    ) -> Result<(String, u64, u64), Error> {
        let receipt: (String, u64, u64) = self.invoke(invocation).await?;
        let timeout = self.inner.config.wait_timeout;
        let [meta, ..] = self.keys(topic);
        let acknowledged = self.inner.link.wait(&meta, replicas, timeout).await.map_err(backend)?;
        if acknowledged >= replicas {
            return Ok(receipt);
        }
        Err(Error::new(
            ErrorKind::Backend,
            format!(
                "offset {} is stored on the master, but {acknowledged} of the {replicas} \
                 replicas asked for (broker.wait_replicas) took it within {timeout:?}: a \
                 failover could lose it; publishing it again with the same idempotency key \
                 stores it once",
                receipt.1,
            ),
        )
        .with_retryable(true)
        .with_transport(NAME))
    }

    pub(crate) fn keys(&self, topic: &Topic) -> [String; 3] {
        let prefix = &self.inner.config.key_prefix;
        ["meta", "log", "keys"].map(|part| format!("{prefix}{{{topic}}}:{part}"))
    }

    /// What `topic` keeps: its rule's retention over the broker's, resolved once.
    pub(crate) fn retention_of(&self, topic: &Topic) -> Retention {
        let config = &self.inner.config;
        if self.inner.rules.is_empty() {
            return config.retention.clone();
        }
        let mut resolved = self.inner.retention.lock().expect("retention lock");
        if let Some(retention) = resolved.get(topic) {
            return retention.clone();
        }
        if resolved.len() >= KEPT_RETENTIONS {
            resolved.clear();
        }
        let retention =
            self.inner.rules.policy(topic, &config.retention, config.max_payload).retention;
        resolved.insert(topic.clone(), retention.clone());
        retention
    }

    /// Reads a page after `cursor` (`limit` 0 only resolves the cursor), in one script.
    async fn read(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        let (mode, epoch, offset) = match cursor {
            Cursor::Beginning => ("b", String::new(), 0),
            Cursor::Latest => ("l", String::new(), 0),
            Cursor::After(epoch, Offset(offset)) => ("a", epoch.to_string(), offset),
            Cursor::Last(count) => ("n", String::new(), count),
            Cursor::Since(millis) => ("s", String::new(), millis),
        };
        let mut invocation = self.inner.read.prepare_invoke();
        for key in self.keys(topic) {
            invocation.key(key);
        }
        invocation
            .arg(Epoch::random().to_string())
            .arg(millis_since_unix_epoch(SystemTime::now()))
            .arg(max_age_millis(&self.retention_of(topic)))
            .arg(mode)
            .arg(epoch)
            .arg(offset)
            .arg(limit);
        let answer: Value = self.invoke(&invocation).await?;
        let Value::Array(parts) = answer else { return Err(protocol("a read is an array")) };
        let [epoch, last, first, position, gap, entries, from] =
            <[Value; 7]>::try_from(parts).map_err(|_| protocol("a read has seven parts"))?;
        let epoch: Epoch = text(&epoch)?.parse().map_err(|_| protocol("an epoch"))?;
        let (last, first, position, from) =
            (int(&last)?, int(&first)?, int(&position)?, int(&from)?);
        let gap = match text(&gap)?.as_str() {
            "" => None,
            "ahead" => {
                return Err(Error::new(
                    ErrorKind::InvalidCursor,
                    format!(
                        "cursor {cursor} is ahead of topic {topic}, whose last offset is {last}"
                    ),
                )
                .with_transport(NAME));
            }
            "retention" => Some(Gap {
                topic: topic.clone(),
                reason: GapReason::Retention,
                missed: Some(OffsetRange { first: Offset(from + 1), last: Offset(first - 1) }),
                cursor: Cursor::After(epoch, Offset(position)),
            }),
            "rebase" => Some(Gap {
                topic: topic.clone(),
                reason: GapReason::EpochChanged {
                    previous: cursor.epoch().ok_or_else(|| protocol("a rebase gap needs one"))?,
                },
                // What the reader read past the takeover (`from`) is gone (it reads those
                // offsets again, with what they hold now); what came since is delivered,
                // unless retention dropped some of it already.
                missed: (position > from)
                    .then(|| OffsetRange { first: Offset(from + 1), last: Offset(position) }),
                cursor: Cursor::After(epoch, Offset(position)),
            }),
            "epoch" => Some(Gap {
                topic: topic.clone(),
                reason: GapReason::EpochChanged {
                    previous: cursor.epoch().ok_or_else(|| protocol("an epoch gap needs one"))?,
                },
                missed: (first > 1)
                    .then(|| OffsetRange { first: Offset(1), last: Offset(first - 1) }),
                cursor: Cursor::After(epoch, Offset(position)),
            }),
            other => return Err(protocol(&format!("gap {other:?}"))),
        };
        let Value::Array(entries) = entries else { return Err(protocol("entries")) };
        let messages = entries
            .iter()
            .map(|entry| message(topic, epoch, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let next = Cursor::After(epoch, Offset(position + messages.len() as u64));
        Ok(Page { gap, messages, next })
    }
}

fn text(value: &Value) -> Result<String, Error> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| protocol("text")),
        Value::SimpleString(text) => Ok(text.clone()),
        _ => Err(protocol("expected text")),
    }
}

fn int(value: &Value) -> Result<u64, Error> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| protocol("a negative number")),
        other => text(other)?.parse().map_err(|_| protocol("expected a number")),
    }
}

/// A stream entry as a message: ID `OFFSET-0`, fields `p`, `t`, and maybe `e` and `c`.
fn message(topic: &Topic, epoch: Epoch, entry: &Value) -> Result<Message, Error> {
    let Value::Array(parts) = entry else { return Err(protocol("an entry")) };
    let [id, Value::Array(fields)] = parts.as_slice() else { return Err(protocol("an entry")) };
    let id = text(id)?;
    let offset =
        id.split('-').next().and_then(|o| o.parse().ok()).ok_or_else(|| protocol("an entry ID"))?;
    let mut message =
        Publication::new(Bytes::new()).into_message(topic.clone(), epoch, Offset(offset));
    for pair in fields.chunks(2) {
        let [name, value] = pair else { return Err(protocol("entry fields")) };
        let Value::BulkString(value) = value else { return Err(protocol("an entry field")) };
        match text(name)?.as_str() {
            "p" => message.payload = Bytes::copy_from_slice(value),
            "t" => {
                let millis = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok());
                message.timestamp = time_from_millis(millis.ok_or_else(|| protocol("a time"))?);
            }
            "e" => message.event = Some(String::from_utf8_lossy(value).into()),
            "c" => message.content_type = Some(String::from_utf8_lossy(value).into()),
            _ => {}
        }
    }
    Ok(message)
}

#[async_trait]
impl Publish for RedisBroker {
    async fn publish(&self, topic: &Topic, mut publication: Publication) -> Result<Receipt, Error> {
        let config = &self.inner.config;
        if topic.is_presence() {
            return Err(pushpull_core::written_by_the_server(topic).with_transport(NAME));
        }
        let retention = self.retention_of(topic);
        publication.validate(config.max_payload).map_err(|e| e.with_transport(NAME))?;
        if publication.key().is_none() {
            // So that sending it again after a dropped connection cannot store it twice.
            publication =
                publication.idempotency_key(format!("{}{}", Epoch::random(), Epoch::random()));
        }
        let mut invocation = self.inner.publish.prepare_invoke();
        for key in self.keys(topic) {
            invocation.key(key);
        }
        invocation
            .arg(Epoch::random().to_string())
            .arg(millis_since_unix_epoch(SystemTime::now()))
            .arg(publication.payload().as_ref())
            .arg(publication.event_type().unwrap_or(""))
            .arg(publication.media_type().unwrap_or(""))
            .arg(publication.key().unwrap_or(""))
            .arg(retention.max_messages)
            .arg(retention.max_bytes)
            .arg(max_age_millis(&retention))
            .arg(wake::channel(&config.key_prefix, topic))
            .arg(wake::shared_channel(&config.key_prefix))
            .arg(topic.as_str());
        let (epoch, offset, millis) = match config.wait_replicas {
            0 => self.invoke::<(String, u64, u64)>(&invocation).await?,
            replicas => self.invoke_and_wait(topic, &invocation, replicas).await?,
        };
        Ok(Receipt {
            topic: topic.clone(),
            epoch: epoch.parse().map_err(|_| protocol("an epoch"))?,
            offset: Offset(offset),
            timestamp: time_from_millis(millis),
            // Subscribers are spread over the nodes: no one node can count them.
            subscribers: None,
        })
    }
}

#[async_trait]
impl Fetch for RedisBroker {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        if limit == 0 {
            return Err(Error::bad_request("limit must be at least 1").with_transport(NAME));
        }
        self.read(topic, cursor, limit.min(self.inner.config.max_page)).await
    }
}

/// How many messages a subscriber takes per step.
const SUBSCRIBER_BATCH: usize = 64;
/// How many messages the node reads from Redis at once into a topic's window.
const WINDOW_READ: usize = 256;

#[async_trait]
impl Subscribe for RedisBroker {
    /// A reader that returned pending waits on its topic's wake-up, on the read at its
    /// window's end (a task of its own), or on its own read's answer: it holds nothing another
    /// reader or command waits for.
    fn parks(&self) -> bool {
        true
    }

    fn directory(&self) -> Option<Arc<dyn Directory>> {
        Some(Arc::new(self.clone()))
    }

    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let wake = self.inner.waker.watch(topic).await;
        let window = self.inner.windows.of(topic);
        // Resolve the cursor now: `latest` means what exists when subscribe returns, and a bad
        // cursor fails here rather than in the stream. A cursor this node's window of the topic
        // covers needs no read (a held long poll at the tail subscribes once per poll): were
        // the log reset or trimmed past it meanwhile, the reader finds out at its first read.
        let covered = matches!(cursor, Cursor::After(..)) && {
            let window = window.lock().expect("window lock");
            window.after(cursor, 0).is_some()
        };
        let start = if covered {
            Page { gap: None, messages: Vec::new(), next: cursor }
        } else {
            self.read(topic, cursor, 0).await?
        };
        // A gap at the start is the first delivery, at once (see the memory broker); the
        // subscription's cursor stays at the start until it is delivered.
        let position = start.next;
        let resume_from = start.gap.as_ref().map_or(position, |gap| gap.resumes_from(cursor));
        let ready: VecDeque<Delivery> = start.gap.map(Delivery::Gap).into_iter().collect();
        let reader = Reader {
            broker: self.clone(),
            topic: topic.clone(),
            window,
            position,
            wake,
            ready,
            failures: 0,
            quiet: 0,
            failed: false,
        };
        Ok(Subscription::new(
            topic.clone(),
            resume_from,
            futures::stream::unfold(reader, Reader::next),
        ))
    }
}

#[async_trait]
impl Directory for RedisBroker {
    /// Every topic with a log under this key prefix, by `SCAN` over the topics' metadata keys.
    async fn topics(&self, prefix: &str) -> Result<Vec<Topic>, Error> {
        let key_prefix = &self.inner.config.key_prefix;
        let escaped: String = key_prefix
            .chars()
            .flat_map(|c| {
                let special = matches!(c, '*' | '?' | '[' | ']' | '\\');
                special.then_some('\\').into_iter().chain([c])
            })
            .collect();
        // Topic names and prefixes hold no glob characters.
        let pattern = format!("{escaped}{{{prefix}*}}:meta");
        let link = &self.inner.link;
        let mut topics = Vec::new();
        // A cluster's masters each hold their own slots' keys: scan every one.
        for master in link.masters().await.map_err(backend)? {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
                let (next, keys): (u64, Vec<String>) =
                    link.on_master(&master, scan).await.map_err(backend)?;
                for key in keys {
                    let name = key
                        .strip_prefix(key_prefix.as_str())
                        .and_then(|k| k.strip_prefix('{'))
                        .and_then(|k| k.strip_suffix("}:meta"));
                    if let Some(topic) = name.and_then(|n| Topic::new(n).ok())
                        && !topic.is_presence()
                        && !topics.contains(&topic)
                    {
                        topics.push(topic);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(topics)
    }

    fn published(&self) -> tokio::sync::broadcast::Receiver<pushpull_core::Listing> {
        self.inner.waker.published()
    }
}

/// One subscriber: a cursor, this node's wake-up signal for the topic, and a handful of
/// messages read but not yet yielded. It holds no Redis connection of its own.
struct Reader {
    broker: RedisBroker,
    topic: Topic,
    /// This node's window on the topic, shared with its other subscribers.
    window: Arc<std::sync::Mutex<crate::cache::Window>>,
    position: Cursor,
    wake: watch::Receiver<u64>,
    ready: VecDeque<Delivery>,
    failures: u32,
    /// Quiet checks in a row: each waited twice as long as the one before.
    quiet: u32,
    failed: bool,
}

/// A topic that stays quiet is checked less and less often: each quiet check waits twice as
/// long as the one before, up to `2^QUIET_DOUBLINGS` times `check_interval`, until a wake-up
/// or a message starts it over. So an idle node's reads of Redis grow with its topics by a
/// thirty-second of what they would, and a lost wake-up (which nothing short of the check
/// finds only when the pub/sub connection stayed up and yet lost one) costs at most that much
/// latency.
const QUIET_DOUBLINGS: u32 = 5;

impl Reader {
    /// The next page after the reader's position: from the node's window when it covers it,
    /// else from Redis (once for every subscriber waiting at the window's end).
    ///
    /// `seen` is the count of the topic's wake-ups the reader has seen; with `since`, the
    /// reader wants a read of Redis started no earlier (it has waited that long without one).
    async fn read(&self, seen: u64, since: Option<Instant>) -> Result<Page, Error> {
        loop {
            let reading = {
                let mut window = self.window.lock().expect("window lock");
                let Some(page) = window.after(self.position, SUBSCRIBER_BATCH) else { break };
                if !page.messages.is_empty() || window.fresh(seen, since) {
                    return Ok(page);
                }
                // At the window's end: wait for the read under way, or start one, for
                // everyone; then look again (a read started before what this reader wants
                // is followed by another).
                self.read_at_end(&mut window, seen)
            };
            reading.await.map_err(|error| {
                Error::new(error.kind(), error.message())
                    .with_retryable(error.is_retryable())
                    .with_transport(NAME)
            })?;
        }
        // Not covered: behind the window, another epoch, or no window yet. Read Redis; a
        // reader at the tail starts (or restarts) the window.
        let started = Instant::now();
        let page = self.broker.read(&self.topic, self.position, SUBSCRIBER_BATCH).await?;
        if page.messages.len() < SUBSCRIBER_BATCH {
            let mut window = self.window.lock().expect("window lock");
            if window.after(page.next, 1).is_none() {
                window.extend(self.position, &page);
                // It reached the tail: as good as a read at the window's end.
                window.read_at_end(seen, started);
            }
        }
        Ok(page)
    }

    /// The read of Redis at the end of `window` (this reader's, locked): the one under way,
    /// or a new one, started after `seen` wake-ups. It runs as a task of its own, so a reader
    /// that stops being polled while it waits holds up none of the others.
    fn read_at_end(&self, window: &mut crate::cache::Window, seen: u64) -> crate::cache::Reading {
        if let Some(reading) = &window.reading {
            return reading.clone();
        }
        let from = Cursor::After(window.epoch.expect("a window has an epoch"), Offset(window.last));
        let started = Instant::now();
        let (broker, topic, shared) =
            (self.broker.clone(), self.topic.clone(), Arc::clone(&self.window));
        let task = tokio::spawn(async move {
            let read = broker.read(&topic, from, WINDOW_READ).await;
            let mut window = shared.lock().expect("window lock");
            window.reading = None;
            let page = read.map_err(Arc::new)?;
            window.extend(from, &page);
            window.read_at_end(seen, started);
            Ok(())
        });
        let reading = async move {
            task.await.unwrap_or_else(|failed| {
                Err(Arc::new(Error::new(
                    ErrorKind::Backend,
                    format!("a read of the topic's new messages failed: {failed}"),
                )))
            })
        }
        .boxed()
        .shared();
        window.reading = Some(reading.clone());
        reading
    }

    // Not an `async fn`: one taking `mut self` keeps the state twice in its future (the
    // argument, and the mutable binding it is moved into), and a waiting stream is this future.
    fn next(
        self,
    ) -> impl std::future::Future<Output = Option<(Result<Delivery, Error>, Self)>> + Send {
        let mut this = self;
        async move {
            let check = this.broker.inner.config.check_interval;
            let backoff =
                Backoff::new(Duration::from_millis(50), check.max(Duration::from_secs(2)));
            // After a quiet `check`, the moment the wait began: the next read must be newer.
            let mut since = None;
            loop {
                if let Some(delivery) = this.ready.pop_front() {
                    return Some((Ok(delivery), this));
                }
                if this.failed {
                    return None;
                }
                // Mark the wake-up seen before reading, so a publish after the read wakes us.
                let seen = *this.wake.borrow_and_update();
                // Boxed: a read of Redis in flight is large, and a subscriber waiting for a
                // wake-up (most of its life) should not keep room for one.
                // The page is spent in this match: the wait below keeps no room for it.
                let caught_up = match Box::pin(this.read(seen, since.take())).await {
                    Ok(page) => {
                        this.failures = 0;
                        this.position = page.next;
                        let caught_up = page.is_empty();
                        if !caught_up {
                            this.quiet = 0;
                        }
                        this.ready.extend(page.into_deliveries());
                        caught_up
                    }
                    Err(error) if error.is_retryable() => {
                        // Redis is away: wait, and go on from where we stand when it is back.
                        tracing::debug!(topic = %this.topic, %error, "redis read failed; retrying");
                        tokio::time::sleep(backoff.delay(this.failures)).await;
                        this.failures = this.failures.saturating_add(1);
                        continue;
                    }
                    Err(error) => {
                        this.failed = true;
                        return Some((Err(error), this));
                    }
                };
                if caught_up {
                    // A wake-up, or the periodic check that catches one that never came.
                    let waiting = Instant::now();
                    let wait = check.saturating_mul(1 << this.quiet.min(QUIET_DOUBLINGS));
                    if tokio::time::timeout(wait, this.wake.changed()).await.is_err() {
                        since = Some(waiting);
                        this.quiet = this.quiet.saturating_add(1);
                    } else {
                        this.quiet = 0;
                    }
                }
            }
        }
    }
}

impl Client for RedisBroker {
    fn presence(&self) -> Option<&dyn pushpull_core::Presence> {
        Some(self)
    }

    fn members(&self) -> Option<&dyn pushpull_core::Members> {
        Some(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true).with_max_payload(self.inner.config.max_payload)
    }
}

impl pushpull_core::OpenBroker for RedisBroker {
    const NAME: &'static str = crate::NAME;
    type Config = RedisConfig;

    fn check(config: &RedisConfig) -> Result<(), Error> {
        config.validate()
    }

    fn open(config: RedisConfig) -> Result<Arc<dyn pushpull_core::Broker>, Error> {
        Ok(Arc::new(RedisBroker::new(config)?))
    }

    fn open_with_rules(
        config: RedisConfig,
        rules: TopicRules,
    ) -> Result<Arc<dyn pushpull_core::Broker>, Error> {
        Ok(Arc::new(RedisBroker::with_rules(config, rules)?))
    }

    fn shared_state(
        config: &RedisConfig,
    ) -> Result<Option<Arc<dyn pushpull_core::SharedState>>, Error> {
        Ok(Some(Arc::new(crate::RedisSharedState::open(config)?)))
    }
}

/// `max_age` in milliseconds for the scripts: 0 keeps messages regardless of age.
pub(crate) fn max_age_millis(retention: &Retention) -> u64 {
    retention.max_age.map_or(0, |age| age.as_millis().max(1) as u64)
}
