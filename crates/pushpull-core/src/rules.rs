//! Rules per family of topics: `[[topics]]` entries of a server's configuration, each for a
//! pattern (`chat:*`, `ticker`, `*`), setting what that family keeps and allows. The entry
//! with the longest matching pattern wins (an exact name beats every prefix); what it leaves
//! out comes from the broker's own settings. A topic's rules are resolved once, when the
//! broker first holds it, not per message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cursor::Cursor;
use crate::error::{Error, ErrorKind, Result};
use crate::memory::Retention;
use crate::message::Capabilities;
use crate::message::{Page, Publication, Receipt};
use crate::presence::{Lease, Member, Members, Presence, PresenceSnapshot, PresenceStats};
use crate::topic::Topic;
use crate::traits::{Broker, Client, Fetch, Publish, Subscribe, Subscription};

/// One `[[topics]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// The topics it covers: a name, a prefix ending in `*`, or `*` for every topic.
    pub pattern: String,
    /// What each of its topics keeps; a key left out is the broker's.
    #[serde(default, skip_serializing_if = "RetentionRule::is_empty")]
    pub retention: RetentionRule,
    /// The largest payload accepted, in bytes, at most the broker's `max_payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<usize>,
    /// Publishes a second per topic (on each node), on average; absent, unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<f64>,
    /// Publishes at once above the rate (default: the rate, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_burst: Option<u32>,
    /// Whether readers may ask for the past (`beginning`, `last:N`, `since:TIME`, pages
    /// newest first); `false` lets them start only at `latest` and go on from a cursor they
    /// were given. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
    /// Whether its topics keep presence (who follows them): `false` makes no members and
    /// refuses to tell who follows (members' identities may be personal data). Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    /// What requests without a token may do with its topics, over `auth.anonymous` (a server
    /// with `[auth]`): `{ subscribe = true }` opens a family to anonymous readers, `{ subscribe
    /// = false }` closes it even where `auth.anonymous` allows every topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<AnonymousRule>,
}

/// The `anonymous` key of a [`TopicRule`]: each right set, or left to `auth.anonymous`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousRule {
    /// Whether requests without a token may publish to its topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    /// Whether requests without a token may read its topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<bool>,
}

impl AnonymousRule {
    fn get(&self, publish: bool) -> Option<bool> {
        if publish { self.publish } else { self.subscribe }
    }
}

/// The retention keys of a [`TopicRule`], each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// The most messages kept per topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<usize>,
    /// The most payload bytes kept per topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// The oldest a message may get, such as `"1d"`.
    #[serde(
        with = "crate::duration_text::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub max_age: Option<Duration>,
}

impl RetentionRule {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with what this rule sets.
    fn over(&self, base: &Retention) -> Retention {
        Retention {
            max_messages: self.max_messages.unwrap_or(base.max_messages),
            max_bytes: self.max_bytes.unwrap_or(base.max_bytes),
            max_age: self.max_age.or(base.max_age),
        }
    }
}

/// What applies to one topic: its rule over the broker's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPolicy {
    /// The pattern of the rule that applies, if one does.
    pub pattern: Option<String>,
    /// What the topic keeps.
    pub retention: Retention,
    /// The largest payload accepted.
    pub max_payload: usize,
    /// Publishes a second and at once, if limited.
    pub publish_rate: Option<(f64, u32)>,
    /// Whether readers may ask for the past.
    pub history: bool,
    /// Whether it keeps presence.
    pub presence: bool,
}

/// Where a pattern matches: exactly one name, or every name with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err("`*` may only end a pattern".into()),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err("`*` may only end a pattern".into()),
            None => Topic::new(text)
                .map(|_| Self::Exact(text.to_owned()))
                .map_err(|e| e.message().to_owned()),
        }
    }

    /// How well it matches `topic`: `None` when it does not; longer is better, and an exact
    /// name beats every prefix.
    fn score(&self, topic: &str) -> Option<usize> {
        match self {
            Self::Exact(name) => (name == topic).then_some(usize::MAX),
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()).then_some(prefix.len()),
        }
    }
}

/// The `[[topics]]` entries, checked; what the broker and the server apply per topic.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    rules: Arc<Vec<(Pattern, TopicRule)>>,
}

impl TopicRules {
    /// Checks `entries` on their own (patterns, one entry per pattern, rates); an error names
    /// the entry (`topics[2]`) and what is wrong with it. A broker checks them against its own
    /// settings with [`check`](Self::check).
    pub fn new(entries: &[TopicRule]) -> Result<Self> {
        let mut rules: Vec<(Pattern, TopicRule)> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let bad = |why: String| entry_error(index, entry, why);
            let pattern =
                Pattern::parse(&entry.pattern).map_err(|why| bad(format!("pattern: {why}")))?;
            if let Some(same) = rules.iter().position(|(p, _)| *p == pattern) {
                return Err(bad(format!(
                    "the same pattern as topics[{same}]: one entry per pattern"
                )));
            }
            if let Some(rate) = entry.publish_rate
                && !(rate > 0.0 && rate.is_finite())
            {
                return Err(bad(
                    "publish_rate must be more than 0 (leave it out for no limit)".into()
                ));
            }
            if entry.publish_burst.is_some() && entry.publish_rate.is_none() {
                return Err(bad("publish_burst needs a publish_rate".into()));
            }
            rules.push((pattern, entry.clone()));
        }
        Ok(Self { rules: Arc::new(rules) })
    }

    /// Checks every entry over a broker's `retention` and `max_payload`: what each family
    /// keeps must hold its largest message, and no family may take larger payloads than the
    /// broker does.
    pub fn check(&self, retention: &Retention, max_payload: usize) -> Result<()> {
        for (index, (_, entry)) in self.rules.iter().enumerate() {
            let bad = |why: String| entry_error(index, entry, why);
            let kept = entry.retention.over(retention);
            let payload = entry.max_payload.unwrap_or(max_payload);
            if kept.max_messages == 0 || payload == 0 {
                return Err(
                    bad("retention.max_messages and max_payload must be at least 1".into()),
                );
            }
            if payload > max_payload {
                return Err(bad(format!(
                    "max_payload ({payload}) is over the broker's max_payload ({max_payload})"
                )));
            }
            if kept.max_bytes < payload {
                return Err(bad(format!(
                    "retention.max_bytes ({}) must be at least max_payload ({payload}), or a \
                     largest message could never be kept",
                    kept.max_bytes
                )));
            }
        }
        Ok(())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The largest `max_messages` any rule sets, at least `base`'s: what a broker sizes its
    /// per-topic structures for.
    pub fn max_messages(&self, base: &Retention) -> usize {
        self.rules
            .iter()
            .filter_map(|(_, rule)| rule.retention.max_messages)
            .fold(base.max_messages, usize::max)
    }

    /// Whether a request without a token may publish to (`publish`) or read `topic`, when the
    /// rule that applies says; `None` leaves it to `auth.anonymous`.
    pub fn anonymous(&self, topic: &str, publish: bool) -> Option<bool> {
        self.rules
            .iter()
            .filter_map(|(pattern, rule)| pattern.score(topic).map(|score| (score, rule)))
            .max_by_key(|(score, _)| *score)
            .and_then(|(_, rule)| rule.anonymous?.get(publish))
    }

    /// Whether a request without a token may read every topic starting with `prefix`: not if
    /// a rule for some of them says no; yes if the rule covering them all says so; `None`
    /// leaves it to `auth.anonymous`.
    pub fn anonymous_prefix(&self, prefix: &str) -> Option<bool> {
        let inside = |pattern: &Pattern| match pattern {
            Pattern::Exact(name) => name.starts_with(prefix),
            Pattern::Prefix(p) => p.starts_with(prefix) && p.len() > prefix.len(),
        };
        let closed = self.rules.iter().any(|(pattern, rule)| {
            inside(pattern) && rule.anonymous.and_then(|a| a.subscribe) == Some(false)
        });
        if closed {
            return Some(false);
        }
        self.rules
            .iter()
            .filter_map(|(pattern, rule)| match pattern {
                Pattern::Prefix(p) if prefix.starts_with(p.as_str()) => Some((p.len(), rule)),
                _ => None,
            })
            .max_by_key(|(length, _)| *length)
            .and_then(|(_, rule)| rule.anonymous?.subscribe)
    }

    /// Whether any rule opens a family to requests without a token.
    pub fn opens_to_anonymous(&self) -> bool {
        self.rules.iter().any(|(_, rule)| {
            rule.anonymous.is_some_and(|a| a.publish == Some(true) || a.subscribe == Some(true))
        })
    }

    /// The rule that applies to `topic`, if any: the longest matching pattern (a presence
    /// log's is its topic's).
    fn rule(&self, topic: &Topic) -> Option<&TopicRule> {
        let name = topic.governing();
        self.rules
            .iter()
            .filter_map(|(pattern, rule)| pattern.score(name).map(|score| (score, rule)))
            .max_by_key(|(score, _)| *score)
            .map(|(_, rule)| rule)
    }

    /// What applies to `topic`, over the broker's `retention` and `max_payload`.
    pub fn policy(&self, topic: &Topic, retention: &Retention, max_payload: usize) -> TopicPolicy {
        let Some(rule) = self.rule(topic) else {
            return TopicPolicy {
                pattern: None,
                retention: retention.clone(),
                max_payload,
                publish_rate: None,
                history: true,
                presence: true,
            };
        };
        TopicPolicy {
            pattern: Some(rule.pattern.clone()),
            retention: rule.retention.over(retention),
            max_payload: rule.max_payload.unwrap_or(max_payload),
            publish_rate: rule.publish_rate.map(|rate| {
                (rate, rule.publish_burst.unwrap_or_else(|| (rate.ceil() as u32).max(1)))
            }),
            history: rule.history.unwrap_or(true),
            presence: rule.presence.unwrap_or(true),
        }
    }
}

fn entry_error(index: usize, entry: &TopicRule, why: String) -> Error {
    Error::new(ErrorKind::Config, format!("topics[{index}] ({:?}): {why}", entry.pattern))
}

/// A broker with the rules that apply above its logs: each topic's `max_payload`, publish rate
/// and history. (Retention is the broker's own to apply: it is given the same rules.)
pub struct RuledBroker {
    inner: Arc<dyn Broker>,
    rules: TopicRules,
    /// Each topic's policy, resolved once, and its publish allowance.
    topics: RwLock<HashMap<Topic, Arc<Ruled>>>,
}

/// A topic's policy and publish allowance.
struct Ruled {
    policy: TopicPolicy,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

/// The most topics whose policies are kept resolved; past it, those not publishing now are
/// forgotten (and resolved again when next used).
const KEPT_POLICIES: usize = 100_000;

impl RuledBroker {
    /// `inner` with `rules`; with no rules, `inner` itself is what to use.
    pub fn new(inner: Arc<dyn Broker>, rules: TopicRules) -> Self {
        Self { inner, rules, topics: RwLock::new(HashMap::new()) }
    }

    fn ruled(&self, topic: &Topic) -> Arc<Ruled> {
        // Every publish and read asks: a topic already resolved takes only a read lock.
        if let Some(ruled) = self.topics.read().expect("rules lock").get(topic) {
            return ruled.clone();
        }
        let mut topics = self.topics.write().expect("rules lock");
        if let Some(ruled) = topics.get(topic) {
            return ruled.clone();
        }
        if topics.len() >= KEPT_POLICIES {
            topics.retain(|_, ruled| Arc::strong_count(ruled) > 1);
        }
        // Retention is the broker's to apply; what is resolved here is what applies above it.
        let max_payload = self.inner.capabilities().max_payload.unwrap_or(usize::MAX);
        let policy = self.rules.policy(topic, &Retention::default(), max_payload);
        let burst = policy.publish_rate.map_or(0.0, |(_, burst)| f64::from(burst));
        let ruled = Arc::new(Ruled { policy, bucket: Mutex::new((burst, Instant::now())) });
        topics.insert(topic.clone(), ruled.clone());
        ruled
    }

    fn refused(policy: &TopicPolicy, what: String) -> Error {
        let pattern = policy.pattern.as_deref().unwrap_or("*");
        Error::new(ErrorKind::Forbidden, format!("{what} ([[topics]] pattern {pattern:?})"))
    }

    fn check_publish(&self, topic: &Topic, publication: &Publication) -> Result<()> {
        let ruled = self.ruled(topic);
        let policy = &ruled.policy;
        if publication.payload().len() > policy.max_payload {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a payload of {} bytes is over the limit of {} for {topic} ([[topics]] \
                     pattern {:?})",
                    publication.payload().len(),
                    policy.max_payload,
                    policy.pattern.as_deref().unwrap_or("*")
                ),
            ));
        }
        if let Some((rate, burst)) = policy.publish_rate {
            let mut bucket = ruled.bucket.lock().expect("bucket lock");
            let now = Instant::now();
            let tokens = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate)
                .min(f64::from(burst));
            if tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - tokens) / rate);
                *bucket = (tokens, now);
                return Err(Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "{topic} takes {rate} publishes a second ([[topics]] pattern {:?}); \
                         try again in {} ms",
                        policy.pattern.as_deref().unwrap_or("*"),
                        wait.as_millis().max(1)
                    ),
                )
                .with_retry_after(wait));
            }
            *bucket = (tokens - 1.0, now);
        }
        Ok(())
    }

    fn check_read(&self, topic: &Topic, cursor: Cursor) -> Result<()> {
        if topic.is_presence() {
            self.check_presence(topic)?;
        }
        let ruled = self.ruled(topic);
        let past = matches!(cursor, Cursor::Beginning | Cursor::Last(_) | Cursor::Since(_));
        if past && !ruled.policy.history {
            return Err(Self::refused(
                &ruled.policy,
                format!(
                    "history is off for {topic}: start at latest, or go on from a cursor, not \
                     at {cursor}"
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for RuledBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuledBroker").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[async_trait]
impl Publish for RuledBroker {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt> {
        self.check_publish(topic, &publication)?;
        self.inner.publish(topic, publication).await
    }

    // `publish_many` is the trait's: each publication through `publish`, so checked.
}

#[async_trait]
impl Fetch for RuledBroker {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page> {
        self.check_read(topic, cursor)?;
        self.inner.fetch(topic, cursor, limit).await
    }

    async fn fetch_newest_first(
        &self,
        topic: &Topic,
        before: Cursor,
        limit: usize,
    ) -> Result<Page> {
        let ruled = self.ruled(topic);
        if !ruled.policy.history {
            return Err(Self::refused(&ruled.policy, format!("history is off for {topic}")));
        }
        self.inner.fetch_newest_first(topic, before, limit).await
    }
}

#[async_trait]
impl Subscribe for RuledBroker {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
        self.check_read(topic, cursor)?;
        self.inner.subscribe(topic, cursor).await
    }

    async fn relay(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
        self.check_read(topic, cursor)?;
        self.inner.relay(topic, cursor).await
    }

    fn parks(&self) -> bool {
        self.inner.parks()
    }

    fn directory(&self) -> Option<Arc<dyn crate::many::Directory>> {
        self.inner.directory()
    }
}

impl Client for RuledBroker {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn presence(&self) -> Option<&dyn Presence> {
        self.inner.presence().map(|_| self as &dyn Presence)
    }

    fn members(&self) -> Option<&dyn Members> {
        self.inner.members().map(|_| self as &dyn Members)
    }
}

impl RuledBroker {
    /// `Forbidden` where `topic`'s rule turns presence off.
    fn check_presence(&self, topic: &Topic) -> Result<()> {
        let ruled = self.ruled(topic);
        match ruled.policy.presence {
            true => Ok(()),
            false => Err(Self::refused(&ruled.policy, format!("presence is off for {topic}"))),
        }
    }

    fn inner_presence(&self) -> Result<&dyn Presence> {
        self.inner
            .presence()
            .ok_or_else(|| Error::new(ErrorKind::Unsupported, "the broker does not keep presence"))
    }
}

#[async_trait]
impl Presence for RuledBroker {
    async fn snapshot(&self, topic: &Topic) -> Result<PresenceSnapshot> {
        self.check_presence(topic)?;
        self.inner_presence()?.snapshot(topic).await
    }

    async fn stats(&self, topic: &Topic) -> Result<PresenceStats> {
        self.check_presence(topic)?;
        self.inner_presence()?.stats(topic).await
    }
}

#[async_trait]
impl Members for RuledBroker {
    /// Makes no member where the topic's rule turns presence off.
    async fn join(
        &self,
        topic: &Topic,
        member: &Member,
        lease: Lease,
        max_members: usize,
    ) -> Result<()> {
        if !self.ruled(topic).policy.presence {
            return Ok(());
        }
        match self.inner.members() {
            Some(members) => members.join(topic, member, lease, max_members).await,
            None => Ok(()),
        }
    }

    async fn leave(&self, topic: &Topic, client: &str) -> Result<()> {
        match self.inner.members() {
            Some(members) => members.leave(topic, client).await,
            None => Ok(()),
        }
    }
}
