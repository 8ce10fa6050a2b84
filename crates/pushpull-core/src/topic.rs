//! Topic names.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// A validated topic name.
///
/// # Rules
///
/// - 1 to [`MAX_TOPIC_LEN`] bytes;
/// - only ASCII letters, digits and the four characters `.` `_` `-` `:`;
/// - the first character is a letter or a digit.
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
}

fn validate(name: &str) -> Result<(), String> {
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
}
