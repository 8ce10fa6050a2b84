//! Where a reader stands: offsets, epochs and cursors.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

/// The position of a message in its topic's log: dense, starting at 1, assigned at publish.
///
/// Offset 0 names the position before the first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset that follows this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One incarnation of a topic's log.
///
/// When a log is reset (a memory broker restarts, a Redis stream is recreated) the epoch
/// changes, so a reader can tell "nothing new" from "history lost". Epochs are random 64-bit
/// values, never zero; their text form is 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A new random epoch.
    pub fn random() -> Epoch {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: fall back to the clock mixed with the process's hash keys,
            // which is still unique per incarnation for all practical purposes.
            use std::hash::{BuildHasher, RandomState};
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            bytes = RandomState::new().hash_one(nanos).to_le_bytes();
        }
        Epoch::from_u64(u64::from_le_bytes(bytes))
    }

    /// The epoch with this value; zero is mapped to one, since zero is never an epoch.
    pub fn from_u64(value: u64) -> Epoch {
        Epoch(value.max(1))
    }

    /// The raw value.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::new(ErrorKind::InvalidCursor, format!("invalid epoch {:?}: {why}", clip(s)))
        };
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("expected 16 lowercase hex digits"));
        }
        let value = u64::from_str_radix(s, 16).map_err(|_| bad("not a hex number"))?;
        if value == 0 {
            return Err(bad("zero is never an epoch"));
        }
        Ok(Epoch(value))
    }
}

/// Where a reader stands in a topic's log.
///
/// # Text form
///
/// One opaque text form is used on every wire (query `after=`, SSE `id:` and `Last-Event-ID`,
/// ETags, webhook bodies): `beginning`, `latest`, or `EPOCH-OFFSET` such as
/// `0f3a9c1d2b4e5f60-42`. It is URL-, header- and SSE-safe. Clients should treat it as opaque
/// and only hand back what a server gave them.
///
/// ```
/// use pushpull_core::{Cursor, Epoch, Offset};
/// let cursor: Cursor = "0f3a9c1d2b4e5f60-42".parse().unwrap();
/// assert_eq!(cursor.offset(), Some(Offset(42)));
/// assert_eq!(cursor.to_string(), "0f3a9c1d2b4e5f60-42");
/// assert!("42".parse::<Cursor>().unwrap_err().to_string().contains("EPOCH-OFFSET"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cursor {
    /// The oldest message still retained.
    #[default]
    Beginning,
    /// Only messages published from now on.
    Latest,
    /// Messages after `offset` in the log incarnation `epoch`.
    After(Epoch, Offset),
}

impl Cursor {
    /// The epoch, for an `After` cursor.
    pub fn epoch(&self) -> Option<Epoch> {
        match self {
            Cursor::After(epoch, _) => Some(*epoch),
            _ => None,
        }
    }

    /// The offset, for an `After` cursor.
    pub fn offset(&self) -> Option<Offset> {
        match self {
            Cursor::After(_, offset) => Some(*offset),
            _ => None,
        }
    }
}

/// The longest cursor text accepted; anything longer is rejected before parsing.
pub const MAX_CURSOR_LEN: usize = 64;

impl FromStr for Cursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "beginning" => return Ok(Cursor::Beginning),
            "latest" => return Ok(Cursor::Latest),
            _ => {}
        }
        let bad = |why: String| {
            Error::new(ErrorKind::InvalidCursor, format!("invalid cursor {:?}: {why}", clip(s)))
        };
        if s.len() > MAX_CURSOR_LEN {
            return Err(bad(format!("longer than {MAX_CURSOR_LEN} bytes")));
        }
        let Some((epoch, offset)) = s.split_once('-') else {
            return Err(bad("expected \"beginning\", \"latest\" or EPOCH-OFFSET".into()));
        };
        let epoch: Epoch = epoch.parse().map_err(|e: Error| bad(e.message().to_owned()))?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("offset {offset:?} is not a decimal number")));
        }
        let offset = offset.parse::<u64>().map_err(|_| bad("offset is out of range".into()))?;
        Ok(Cursor::After(epoch, Offset(offset)))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Beginning => f.write_str("beginning"),
            Cursor::Latest => f.write_str("latest"),
            Cursor::After(epoch, offset) => write!(f, "{epoch}-{offset}"),
        }
    }
}

impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_CURSOR_LEN) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let epoch = Epoch::random();
        for cursor in [
            Cursor::Beginning,
            Cursor::Latest,
            Cursor::After(epoch, Offset(0)),
            Cursor::After(epoch, Offset(u64::MAX)),
        ] {
            assert_eq!(cursor.to_string().parse::<Cursor>().unwrap(), cursor);
        }
    }

    #[test]
    fn rejects_garbage_with_the_reason() {
        let cases = [
            ("", "expected"),
            ("42", "EPOCH-OFFSET"),
            ("zz-1", "16 lowercase hex"),
            ("0F3A9C1D2B4E5F60-1", "16 lowercase hex"),
            ("0000000000000000-1", "zero"),
            ("0f3a9c1d2b4e5f60-", "not a decimal"),
            ("0f3a9c1d2b4e5f60--1", "not a decimal"),
            ("0f3a9c1d2b4e5f60-+1", "not a decimal"),
            ("0f3a9c1d2b4e5f60-99999999999999999999", "out of range"),
            ("Beginning", "expected"),
        ];
        for (text, expected) in cases {
            let err = text.parse::<Cursor>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidCursor, "{text}");
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
        let long = "a".repeat(10_000);
        assert!(long.parse::<Cursor>().unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn epochs_differ_and_are_never_zero() {
        assert_ne!(Epoch::random(), Epoch::random());
        assert_eq!(Epoch::from_u64(0).as_u64(), 1);
    }
}
