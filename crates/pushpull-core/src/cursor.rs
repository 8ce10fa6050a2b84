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
/// Two more starting points read history the way interfaces ask for it: `last:N` (the last `N`
/// retained messages, then what follows; `last:1` is "the current value, then follow") and
/// `since:TIME` (every message published at or after `TIME`, then what follows), where `TIME` is
/// milliseconds since the Unix epoch or an RFC 3339 date-time such as `2026-12-03T10:00:00Z`.
/// They print as `last:N` and `since:MILLIS`. A broker resolves them to an `EPOCH-OFFSET` when
/// it reads, with a [`Gap`](crate::Gap) where `N` or `TIME` reaches past what it retains.
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
    /// The last `N` retained messages, then what follows (`last:N`). `Last(0)` is `Latest`.
    Last(u64),
    /// The messages published at or after this many milliseconds since the Unix epoch, then
    /// what follows (`since:TIME`).
    Since(u64),
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

    /// The `Since` cursor of a point in time (milliseconds precision; before 1970 is 1970).
    pub fn since(time: std::time::SystemTime) -> Cursor {
        Cursor::Since(crate::message::millis_since_unix_epoch(time))
    }

    /// Whether it is a position in a log (`After`) rather than a starting point a broker
    /// resolves when it reads (`beginning`, `latest`, `last:N`, `since:TIME`).
    pub fn is_position(&self) -> bool {
        matches!(self, Cursor::After(..))
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
        if let Some(count) = s.strip_prefix("last:") {
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("last:N needs a whole number, not {count:?}")));
            }
            let count = count.parse::<u64>().map_err(|_| bad("N is out of range".into()))?;
            return Ok(Cursor::Last(count));
        }
        if let Some(time) = s.strip_prefix("since:") {
            return parse_time(time).map(Cursor::Since).map_err(|why| bad(why.into()));
        }
        let Some((epoch, offset)) = s.split_once('-') else {
            return Err(bad(
                "expected \"beginning\", \"latest\", \"last:N\", \"since:TIME\" or EPOCH-OFFSET"
                    .into(),
            ));
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
            Cursor::Last(count) => write!(f, "last:{count}"),
            Cursor::Since(millis) => write!(f, "since:{millis}"),
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

/// `since:`'s time: milliseconds since the Unix epoch, or an RFC 3339 date-time (`Z` or a
/// numeric offset, any fraction of a second down to the millisecond).
fn parse_time(text: &str) -> Result<u64, &'static str> {
    const EXPECTED: &str = "since:TIME needs milliseconds since the Unix epoch or an RFC 3339 date-time \
         such as 2026-12-03T10:00:00Z";
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| "since:TIME is out of range");
    }
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Result<i64, &'static str> {
        let part = b.get(from..from + len).ok_or(EXPECTED)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(EXPECTED);
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let punct = |at: usize, options: &[u8]| -> Result<(), &'static str> {
        if b.get(at).is_some_and(|c| options.contains(c)) { Ok(()) } else { Err(EXPECTED) }
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    punct(4, b"-")?;
    punct(7, b"-")?;
    punct(10, b"Tt ")?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    punct(13, b":")?;
    punct(16, b":")?;
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(EXPECTED);
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            punct(at + 3, b":")?;
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return Err("since:TIME has an out-of-range UTC offset");
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return Err(EXPECTED),
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err("since:TIME has a month out of range"),
    };
    // RFC 3339 allows a leap second (60); it counts as the last millisecond of its minute.
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err("since:TIME has a field out of range");
    }
    let (second, millis) = if second == 60 { (59, 999) } else { (second, millis) };
    // Days from 1970-01-01 to the civil date (proleptic Gregorian calendar).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let total = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60 + second;
    let millis = total * 1000 + millis;
    u64::try_from(millis).map_err(|_| "since:TIME is before 1970")
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
            Cursor::Last(0),
            Cursor::Last(20),
            Cursor::Since(0),
            Cursor::Since(1_764_752_400_123),
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
    fn history_starts_parse() {
        let parse = |text: &str| text.parse::<Cursor>();
        assert_eq!(parse("last:5").unwrap(), Cursor::Last(5));
        assert_eq!(parse("since:1764752400123").unwrap(), Cursor::Since(1_764_752_400_123));
        let cases = [
            ("since:1970-01-01T00:00:00Z", 0),
            ("since:2026-12-03T09:00:00Z", 1_796_288_400_000),
            ("since:2026-12-03T10:00:00+01:00", 1_796_288_400_000),
            ("since:2026-12-03T08:30:00-00:30", 1_796_288_400_000),
            ("since:2026-12-03 09:00:00.5z", 1_796_288_400_500),
            ("since:2026-12-03T09:00:00.123456789Z", 1_796_288_400_123),
            ("since:2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("since:2016-12-31T23:59:60Z", 1_483_228_799_999),
        ];
        for (text, millis) in cases {
            assert_eq!(parse(text).unwrap(), Cursor::Since(millis), "{text}");
        }
        let bad = [
            ("last:", "whole number"),
            ("last:-1", "whole number"),
            ("last:99999999999999999999", "out of range"),
            ("since:", "RFC 3339"),
            ("since:yesterday", "RFC 3339"),
            ("since:2026-12-03", "RFC 3339"),
            ("since:2026-12-03T09:00:00", "RFC 3339"),
            ("since:2026-12-03T09:00:00.Z", "RFC 3339"),
            ("since:2026-13-03T09:00:00Z", "month"),
            ("since:2025-02-29T09:00:00Z", "out of range"),
            ("since:2026-12-03T24:00:00Z", "out of range"),
            ("since:2026-12-03T09:00:00+24:00", "offset"),
            ("since:1969-12-31T23:59:59Z", "before 1970"),
            ("since:99999999999999999999", "out of range"),
        ];
        for (text, why) in bad {
            let err = parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidCursor, "{text}");
            assert!(err.to_string().contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn epochs_differ_and_are_never_zero() {
        assert_ne!(Epoch::random(), Epoch::random());
        assert_eq!(Epoch::from_u64(0).as_u64(), 1);
    }
}
