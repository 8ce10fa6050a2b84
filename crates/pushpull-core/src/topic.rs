//! Topic names.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// What starts the name of a topic's presence log: `.presence:orders` is the log of who
/// joined and left `orders`. No topic a client creates can start with it (a name starts with a
/// letter or a digit), so the name is the server's: readers read it like any topic, with the
/// right to read `orders`; nobody publishes to it.
pub const PRESENCE_PREFIX: &str = ".presence:";

/// A validated topic name.
///
/// # Rules
///
/// - 1 to [`MAX_TOPIC_LEN`] bytes;
/// - only ASCII letters, digits and the four characters `.` `_` `-` `:`;
/// - the first character is a letter or a digit.
///
/// One more form is valid: [`PRESENCE_PREFIX`] followed by a valid name, the presence log of
/// that topic ([`Topic::presence`]).
///
/// The rules make a topic safe, unescaped, in a URL path segment, an HTTP header, a Redis key
/// and a log line, and they rule out `.` and `..` as path segments.
///
/// Cloning is cheap: the name is shared.
///
/// ```
/// use pushpull_core::Topic;
/// let topic = Topic::new("prices.eur-usd").unwrap();
/// assert_eq!(topic.as_str(), "prices.eur-usd");
/// let err = Topic::new("no spaces").unwrap_err();
/// assert!(err.to_string().contains("position 2"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` and makes a topic of it.
    pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
        let name = name.as_ref();
        validate(name).map_err(|why| {
            Error::new(ErrorKind::InvalidTopic, format!("invalid topic {:?}: {why}", shorten(name)))
        })?;
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's presence log: its joins and leaves, read like any topic. The presence log
    /// of a presence log is itself.
    pub fn presence(&self) -> Topic {
        if self.is_presence() {
            return self.clone();
        }
        Self(Arc::from(format!("{PRESENCE_PREFIX}{}", self.0)))
    }

    /// Whether this is a topic's presence log.
    pub fn is_presence(&self) -> bool {
        self.0.starts_with(PRESENCE_PREFIX)
    }

    /// The topic whose presence log this is, if it is one.
    pub fn presence_of(&self) -> Option<Topic> {
        self.0.strip_prefix(PRESENCE_PREFIX).map(|name| Self(Arc::from(name)))
    }

    /// The topic whose rules and rights apply: the one a presence log belongs to, else itself.
    pub fn governing(&self) -> &str {
        self.0.strip_prefix(PRESENCE_PREFIX).unwrap_or(&self.0)
    }
}

fn validate(name: &str) -> Result<(), String> {
    let name = name.strip_prefix(PRESENCE_PREFIX).unwrap_or(name);
    if name.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "a topic name is at most {MAX_TOPIC_LEN} bytes, this one has {}",
            name.len()
        ));
    }
    for (position, ch) in name.chars().enumerate() {
        let allowed = ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-' | ':');
        if !allowed {
            return Err(format!(
                "character {ch:?} at position {position} is not allowed \
                 (use ASCII letters, digits, '.', '_', '-' or ':')"
            ));
        }
        if position == 0 && !ch.is_ascii_alphanumeric() {
            return Err(format!("a topic name must start with a letter or a digit, not {ch:?}"));
        }
    }
    Ok(())
}

/// Keeps error messages one short line even for absurd input.
fn shorten(name: &str) -> String {
    const KEEP: usize = 64;
    match name.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl FromStr for Topic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for name in ["a", "ticker", "prices.EUR-USD", "user:42_inbox", "0", &"x".repeat(128)] {
            assert!(Topic::new(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases = [
            ("", "empty"),
            (".", "start with"),
            ("..", "start with"),
            ("-x", "start with"),
            ("a b", "position 1"),
            ("a/b", "'/'"),
            ("café", "'é'"),
            ("a\nb", "'\\n'"),
        ];
        for (name, expected) in cases {
            let err = Topic::new(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidTopic);
            assert!(err.to_string().contains(expected), "{name:?}: {err}");
        }
        let long = "x".repeat(129);
        assert!(Topic::new(&long).unwrap_err().to_string().contains("at most 128 bytes"));
        // A huge name is not echoed whole into the message.
        let huge = "é".repeat(10_000);
        assert!(Topic::new(&huge).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn a_presence_log_is_named_after_its_topic() {
        let topic = Topic::new("chat:42").unwrap();
        let presence = topic.presence();
        assert_eq!(presence.as_str(), ".presence:chat:42");
        assert!(presence.is_presence() && !topic.is_presence());
        assert_eq!(presence.presence_of(), Some(topic.clone()));
        assert_eq!(presence.presence(), presence);
        assert_eq!(presence.governing(), "chat:42");
        assert_eq!(Topic::new(".presence:chat:42").unwrap(), presence);
        for bad in [".presence:", ".presence:.x", ".presence:a b", ".presencex"] {
            assert!(Topic::new(bad).is_err(), "{bad}");
        }
        assert!(Topic::new(format!(".presence:{}", "x".repeat(128))).is_ok());
    }
}
