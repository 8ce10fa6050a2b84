//! What an authenticated request may do: the rights an auth layer puts in a request's
//! extensions, which handlers that serve many operations on one connection (the WebSocket)
//! check operation by operation.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Request;
use pushpull_core::{Error, ErrorKind, Selector, Topic};
use tokio::time::Instant;

use crate::revoke::{Ended, Ending, Revocations};

/// A topic pattern: `*` (every topic), a prefix ending in `*` (`orders:*`), or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Every topic.
    Any,
    /// Topics that start with this.
    Prefix(String),
    /// This topic only.
    Exact(String),
}

impl TopicPattern {
    /// Parses a pattern; a `*` anywhere but at the end is an error.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::new(ErrorKind::BadRequest, format!("pattern {text:?}: {why}"));
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        match text.strip_suffix('*') {
            Some("") => Ok(Self::Any),
            Some(prefix) if prefix.contains('*') => Err(bad("`*` may only end a pattern")),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err(bad("`*` may only end a pattern")),
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            Self::Exact(name) => topic == name,
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Exact(name) => f.write_str(name),
        }
    }
}

/// Checks a token as the auth layer does at a request, and gives its rights.
pub trait CheckToken: Send + Sync + 'static {
    /// The rights of `token`, or why it is refused (`unauthorized`: bad, expired, revoked).
    fn check_token(&self, token: &str) -> Result<Grant, Error>;
}

/// What one request (or one WebSocket) may do, until when.
#[derive(Clone, Default)]
pub struct Grant {
    /// Who: the token's subject (`sub`).
    pub subject: Option<String>,
    /// The token's id (`jti`), if it has one: what revokes this one token.
    pub token_id: Option<String>,
    /// When the token was issued (`iat`), if it says.
    pub issued_at: Option<SystemTime>,
    /// The revocations the server enforces, which can end these rights before they expire.
    pub revocations: Option<Revocations>,
    /// How the server checks a token, for a connection that takes a new one in place (a
    /// WebSocket's `refresh`); set by the auth layer that made this grant.
    pub checker: Option<Arc<dyn CheckToken>>,
    /// Whether these are the rights of requests without a token: a right they lack is then
    /// `unauthorized` (bring a token), not `forbidden`.
    pub anonymous: bool,
    /// For the rights of requests without a token: the `[[topics]]` rules that open or close
    /// families of topics to them, over `publish` and `subscribe`.
    pub anonymous_rules: Option<pushpull_core::TopicRules>,
    /// Topics it may publish to.
    pub publish: Vec<TopicPattern>,
    /// Topics it may read (subscribe, fetch).
    pub subscribe: Vec<TopicPattern>,
    /// Whether it may manage the server (the webhook API, metrics).
    pub admin: bool,
    /// When the rights end; `None` never.
    pub expires: Option<SystemTime>,
    /// The publish allowance it shares with every other request of the same token.
    pub publish_rate: Option<Arc<RateLimit>>,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("subject", &self.subject)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("admin", &self.admin)
            .field("expires", &self.expires)
            .field("token_id", &self.token_id)
            .finish()
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right<'a> {
    /// Publishing to this topic.
    Publish(&'a str),
    /// Reading this topic.
    Subscribe(&'a str),
    /// Managing the server.
    Admin,
}

impl fmt::Display for Right<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Right::Publish(topic) => write!(f, "publish:{topic}"),
            Right::Subscribe(topic) => write!(f, "subscribe:{topic}"),
            Right::Admin => f.write_str("admin"),
        }
    }
}

impl Grant {
    /// The grant an auth layer put on `request`, if any.
    pub fn of<B>(request: &Request<B>) -> Option<&Grant> {
        request.extensions().get::<Grant>()
    }

    /// Whether it holds `right` (admin holds them all).
    pub fn allows(&self, right: Right<'_>) -> bool {
        let any =
            |patterns: &[TopicPattern], topic: &str| patterns.iter().any(|p| p.matches(topic));
        if self.admin {
            return true;
        }
        let ruled = |topic: &str, publish| {
            self.anonymous_rules.as_ref().and_then(|rules| rules.anonymous(topic, publish))
        };
        match right {
            Right::Publish(topic) => {
                ruled(topic, true).unwrap_or_else(|| any(&self.publish, topic))
            }
            Right::Subscribe(topic) => {
                // A topic's presence log is read with the right to read the topic.
                let topic = topic.strip_prefix(pushpull_core::PRESENCE_PREFIX).unwrap_or(topic);
                ruled(topic, false).unwrap_or_else(|| any(&self.subscribe, topic))
            }
            Right::Admin => false,
        }
    }

    /// `Ok` if it holds `right` and has not expired; otherwise the error to answer with
    /// (`unauthorized` for an expired token, `forbidden` for a missing right).
    pub fn check(&self, right: Right<'_>) -> Result<(), Error> {
        self.check_live()?;
        if !self.allows(right) {
            return Err(self.lacks(right.to_string()));
        }
        Ok(())
    }

    /// The error for a right it lacks: `forbidden` for a token, `unauthorized` (with what a
    /// token would need to grant) for a request without one.
    fn lacks(&self, right: String) -> Error {
        match self.anonymous {
            true => Error::new(
                ErrorKind::Unauthorized,
                format!("this needs a token granting {right} (Authorization: Bearer …)"),
            ),
            false => Error::new(ErrorKind::Forbidden, format!("the token does not grant {right}")),
        }
    }

    /// [`check`](Self::check) for publishing to `topic`, then takes one publish from the
    /// token's allowance (`rate_limited` with the wait when it is used up).
    pub fn check_publish(&self, topic: &Topic) -> Result<(), Error> {
        self.check(Right::Publish(topic.as_str()))?;
        if let Some(rate) = &self.publish_rate {
            rate.take()?;
        }
        Ok(())
    }

    /// [`check`](Self::check) for reading what `selector` selects: a topic needs the right to
    /// read it; a prefix needs one right that covers every topic it may select (`*`, or a
    /// prefix pattern the selector's prefix starts with).
    pub fn check_selector(&self, selector: &Selector) -> Result<(), Error> {
        let prefix = match selector {
            Selector::Topic(topic) => return self.check(Right::Subscribe(topic.as_str())),
            Selector::Prefix(prefix) => prefix,
        };
        self.check_live()?;
        let covers = |pattern: &TopicPattern| match pattern {
            TopicPattern::Any => true,
            TopicPattern::Prefix(p) => prefix.starts_with(p.as_str()),
            TopicPattern::Exact(_) => false,
        };
        let ruled = self.anonymous_rules.as_ref().and_then(|rules| rules.anonymous_prefix(prefix));
        let covered = self.admin || ruled.unwrap_or_else(|| self.subscribe.iter().any(covers));
        if covered {
            return Ok(());
        }
        Err(self.lacks(format!("subscribe:{selector} (a right covering the whole prefix)")))
    }

    /// `unauthorized` once the token has expired or was revoked.
    fn check_live(&self) -> Result<(), Error> {
        let ended = match () {
            () if self.is_expired() => Ended::Expired,
            () if self.is_revoked() => Ended::Revoked,
            () => return Ok(()),
        };
        Err(Error::new(ErrorKind::Unauthorized, ended.message()))
    }

    /// Whether the token was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revocations.as_ref().is_some_and(|revocations| revocations.covers(self))
    }

    /// A future that resolves when the rights end, at expiry or on revocation; `None` when
    /// they never do.
    pub fn ending(&self) -> Option<Ending> {
        let deadline = self.deadline();
        let revoked = self.revocations.as_ref().map(|revocations| revocations.revoked(self));
        if deadline.is_none() && revoked.is_none() {
            return None;
        }
        Some(Box::pin(async move {
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let revoked = async {
                match revoked {
                    Some(revoked) => revoked.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = expired => Ended::Expired,
                () = revoked => Ended::Revoked,
            }
        }))
    }

    /// Whether the rights have ended.
    pub fn is_expired(&self) -> bool {
        self.expires.is_some_and(|at| at <= SystemTime::now())
    }

    /// How long until the rights end, if they do.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// The tokio instant the rights end at, if they do.
    pub fn deadline(&self) -> Option<Instant> {
        self.remaining().map(|left| Instant::now() + left)
    }
}

/// A token bucket: `rate` operations a second on average, `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes one operation, or says how long to wait for one.
    pub fn take(&self) -> Result<(), Error> {
        let mut state = self.state.lock().expect("rate lock");
        let (tokens, at) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - *tokens) / self.rate.max(f64::MIN_POSITIVE));
        Err(Error::new(
            ErrorKind::RateLimited,
            format!(
                "this token publishes more than {} times a second; wait {} ms",
                self.rate,
                wait.as_millis().max(1)
            ),
        )
        .with_retry_after(wait))
    }

    /// Whether the bucket is full (nothing used lately): an entry that can be forgotten.
    pub fn is_idle(&self) -> bool {
        let state = self.state.lock().expect("rate lock");
        state.0 + state.1.elapsed().as_secs_f64() * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(publish: &[&str], subscribe: &[&str]) -> Grant {
        let parse = |list: &[&str]| list.iter().map(|p| TopicPattern::parse(p).unwrap()).collect();
        Grant { publish: parse(publish), subscribe: parse(subscribe), ..Grant::default() }
    }

    #[test]
    fn patterns_are_exact_prefixes_or_everything() {
        let g = grant(&["orders:*"], &["news", "*"]);
        assert!(g.allows(Right::Publish("orders:1")));
        assert!(g.allows(Right::Publish("orders:")));
        assert!(!g.allows(Right::Publish("orders")));
        assert!(!g.allows(Right::Publish("news")));
        assert!(g.allows(Right::Subscribe("anything")));
        assert!(!g.allows(Right::Admin));
        for bad in ["", "a*b", "**", "*a"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_expired_grant_is_unauthorized_and_a_missing_right_forbidden() {
        let mut g = grant(&[], &["a"]);
        assert_eq!(g.check(Right::Subscribe("b")).unwrap_err().kind(), ErrorKind::Forbidden);
        g.expires = Some(SystemTime::now() - Duration::from_secs(1));
        assert_eq!(g.check(Right::Subscribe("a")).unwrap_err().kind(), ErrorKind::Unauthorized);
    }

    #[test]
    fn the_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let rate = RateLimit::new(10.0, 3);
        for _ in 0..3 {
            rate.take().unwrap();
        }
        let refused = rate.take().unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::RateLimited);
        let wait = refused.retry_after().unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(!rate.is_idle());
    }
}
