//! What is published and what is delivered.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::cursor::{Cursor, Epoch, Offset};
use crate::error::{Error, ErrorKind};
use crate::topic::Topic;

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_LEN: usize = 64;
/// The longest content type accepted, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// Event types starting with this are reserved for the transports' own events (such as SSE's
/// `pushpull-gap`), so a published event can never pass for one of them.
pub const RESERVED_EVENT_PREFIX: &str = "pushpull-";
/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// What a publisher hands over: a payload and optional labels. The broker adds the rest.
///
/// ```
/// use pushpull_core::Publication;
/// let p = Publication::new("42.17").event("price").content_type("text/plain");
/// assert_eq!(p.payload(), "42.17".as_bytes());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publication {
    payload: Bytes,
    event: Option<Arc<str>>,
    content_type: Option<Arc<str>>,
    idempotency_key: Option<Arc<str>>,
}

impl Publication {
    /// A publication of `payload` (any bytes; text is just valid UTF-8).
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self { payload: payload.into(), event: None, content_type: None, idempotency_key: None }
    }

    /// Labels the message with an event type (SSE's `event:`, for example).
    pub fn event(mut self, event: impl AsRef<str>) -> Self {
        self.event = Some(Arc::from(event.as_ref()));
        self
    }

    /// Records the payload's media type.
    pub fn content_type(mut self, content_type: impl AsRef<str>) -> Self {
        self.content_type = Some(Arc::from(content_type.as_ref()));
        self
    }

    /// Makes retries safe: a broker that already stored a publication with this key on this
    /// topic (and still retains it) answers with the first receipt instead of storing it again.
    /// Transport clients set a fresh key on each publish so they can retry after a dropped
    /// connection without duplicating.
    pub fn idempotency_key(mut self, key: impl AsRef<str>) -> Self {
        self.idempotency_key = Some(Arc::from(key.as_ref()));
        self
    }

    /// The idempotency key, if any.
    pub fn key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The event type, if any.
    pub fn event_type(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The content type, if any.
    pub fn media_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// Checks the labels and the payload size against `max_payload` bytes.
    ///
    /// An event type is 1 to [`MAX_EVENT_LEN`] bytes of visible ASCII (it travels in SSE
    /// fields and HTTP headers) not starting with [`RESERVED_EVENT_PREFIX`]; a content type is 1 to [`MAX_CONTENT_TYPE_LEN`] bytes of
    /// visible ASCII or spaces.
    pub fn validate(&self, max_payload: usize) -> Result<(), Error> {
        if self.payload.len() > max_payload {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "payload of {} bytes is over the limit of {max_payload} bytes",
                    self.payload.len()
                ),
            ));
        }
        if let Some(event) = &self.event {
            check_label("event type", event, MAX_EVENT_LEN, |b| b.is_ascii_graphic())?;
            if event.starts_with(RESERVED_EVENT_PREFIX) {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    format!("event types starting with {RESERVED_EVENT_PREFIX:?} are reserved"),
                ));
            }
        }
        if let Some(content_type) = &self.content_type {
            check_label("content type", content_type, MAX_CONTENT_TYPE_LEN, |b| {
                b.is_ascii_graphic() || b == b' '
            })?;
        }
        if let Some(key) = &self.idempotency_key {
            check_label("idempotency key", key, MAX_IDEMPOTENCY_KEY_LEN, |b| b.is_ascii_graphic())?;
        }
        Ok(())
    }

    /// Turns the publication into the message the broker stores.
    pub fn into_message(self, topic: Topic, epoch: Epoch, offset: Offset) -> Message {
        Message {
            topic,
            epoch,
            offset,
            timestamp: SystemTime::now(),
            event: self.event,
            content_type: self.content_type,
            payload: self.payload,
            encodings: Encodings::default(),
        }
    }
}

fn check_label(what: &str, value: &str, max: usize, ok: impl Fn(u8) -> bool) -> Result<(), Error> {
    let why = if value.is_empty() {
        format!("{what} must not be empty")
    } else if value.len() > max {
        format!("{what} is at most {max} bytes, this one has {}", value.len())
    } else if let Some(bad) = value.bytes().find(|&b| !ok(b)) {
        format!("{what} contains the byte 0x{bad:02x}, only visible ASCII is allowed")
    } else {
        return Ok(());
    };
    Err(Error::new(ErrorKind::BadRequest, why))
}

/// A published message as the broker stored it.
///
/// Cloning is cheap: the topic, labels and payload are shared, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: Topic,
    /// The incarnation of the topic's log that holds it.
    pub epoch: Epoch,
    /// Its position in that log.
    pub offset: Offset,
    /// When the broker accepted it.
    pub timestamp: SystemTime,
    /// The event type, if the publisher gave one.
    pub event: Option<Arc<str>>,
    /// The payload's media type, if the publisher gave one.
    pub content_type: Option<Arc<str>>,
    /// The payload.
    pub payload: Bytes,
    /// Its wire encodings, each made once and shared by every clone: a message pushed to a
    /// thousand subscribers is encoded once per format, not a thousand times.
    pub encodings: Encodings,
}

/// The wire encodings of one [`Message`], made on first use and shared by all its clones (so
/// by every subscriber reading it from a broker's log). Each format that caches its encoding
/// declares its own [`EncodingKey`]; core knows no format by name.
/// Not part of the message's value: two messages that differ only here are equal.
#[derive(Clone, Default)]
pub struct Encodings(Arc<[OnceLock<Box<dyn Any + Send + Sync>>; Encodings::SLOTS]>);

/// Names one wire format's place in every message's [`Encodings`]. Declare one per format, as a
/// `static`, in the crate that owns the format:
///
/// ```
/// use pushpull_core::{EncodingKey, Message};
///
/// static MY_FORMAT: EncodingKey = EncodingKey::new();
///
/// fn encoded(message: &Message) -> bytes::Bytes {
///     message.encodings.get_or_encode(&MY_FORMAT, || bytes::Bytes::from(message.payload.to_vec()))
/// }
/// ```
///
/// Keys take slots in the order they are first used; past [`Encodings::SLOTS`] formats, a
/// format is encoded every time (correct, only slower).
#[derive(Debug)]
pub struct EncodingKey(OnceLock<usize>);

impl EncodingKey {
    /// A key, given its slot on first use.
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    fn slot(&self) -> usize {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        *self.0.get_or_init(|| NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for EncodingKey {
    fn default() -> Self {
        Self::new()
    }
}

impl Encodings {
    /// How many formats can be cached per message.
    pub const SLOTS: usize = 8;

    /// The encoding `key` names, made by `encode` if this is its first use: any cheaply cloned
    /// value (`Bytes`, a ready-made frame). A key past the slots, or a slot holding a value of
    /// another type, encodes every time.
    pub fn get_or_encode<T>(&self, key: &EncodingKey, encode: impl FnOnce() -> T) -> T
    where
        T: Any + Clone + Send + Sync,
    {
        let Some(cell) = self.0.get(key.slot()) else { return encode() };
        if let Some(stored) = cell.get() {
            return match stored.downcast_ref::<T>() {
                Some(value) => value.clone(),
                None => encode(),
            };
        }
        let value = encode();
        // Another reader may have stored it meanwhile; either encoding is the same.
        let _ = cell.set(Box::new(value.clone()));
        value
    }
}

impl fmt::Debug for Encodings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let made = self.0.iter().filter(|cell| cell.get().is_some()).count();
        write!(f, "Encodings({made} made)")
    }
}

impl PartialEq for Encodings {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Encodings {}

impl Message {
    /// The cursor that stands just after this message.
    pub fn cursor(&self) -> Cursor {
        Cursor::After(self.epoch, self.offset)
    }

    /// The timestamp in milliseconds since the Unix epoch, as it travels on the wire.
    pub fn timestamp_millis(&self) -> u64 {
        millis_since_unix_epoch(self.timestamp)
    }

    /// The same message with an empty payload (its labels and position only).
    pub fn with_empty_payload(&self) -> Message {
        Message { payload: Bytes::new(), encodings: Encodings::default(), ..self.clone() }
    }

    /// The payload as text, if it is valid UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// Milliseconds since the Unix epoch (zero for times before it).
pub fn millis_since_unix_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The time `millis` milliseconds after the Unix epoch.
pub fn time_from_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// What a publisher gets back: where its message now stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The topic.
    pub topic: Topic,
    /// The log incarnation.
    pub epoch: Epoch,
    /// The offset assigned.
    pub offset: Offset,
    /// When the broker accepted it.
    pub timestamp: SystemTime,
    /// How many subscriptions followed the topic when it was published (streams, sockets,
    /// held long polls, webhook endpoints; not short polls), where the broker knows: the
    /// memory broker exactly; `None` from a broker shared by several nodes, and for a retried
    /// publish answered with its first receipt. `Some(0)`: nobody was listening.
    pub subscribers: Option<u64>,
}

impl Receipt {
    /// The cursor just after the published message.
    pub fn cursor(&self) -> Cursor {
        Cursor::After(self.epoch, self.offset)
    }
}

/// An inclusive range of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffsetRange {
    /// The first offset in the range.
    pub first: Offset,
    /// The last offset in the range.
    pub last: Offset,
}

impl OffsetRange {
    /// How many offsets the range holds.
    pub fn len(&self) -> u64 {
        self.last.0 - self.first.0 + 1
    }

    /// Always false: a range holds at least one offset.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why a reader missed messages.
///
/// Deliberately exhaustive, like [`Delivery`]: every wire format encodes each reason, so a new
/// one would be a protocol change, made with a new version, not something a match should
/// silently pass over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The messages fell out of retention before the reader got to them.
    Retention,
    /// The log was reset: everything the reader had not read in the `previous` incarnation
    /// is gone, and reading goes on in the new one.
    EpochChanged {
        /// The epoch of the reader's cursor.
        previous: Epoch,
    },
}

impl GapReason {
    /// The wire name: `retention` or `epoch_changed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            GapReason::Retention => "retention",
            GapReason::EpochChanged { .. } => "epoch_changed",
        }
    }
}

/// A delivery that says exactly what a reader missed. A Gap is data, never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The topic.
    pub topic: Topic,
    /// Why the messages were missed.
    pub reason: GapReason,
    /// The offsets missed in the current epoch, if any. After an epoch change it names what
    /// of the new incarnation was also lost to retention; it is `None` when nothing was.
    pub missed: Option<OffsetRange>,
    /// Where the reader stands after the gap: reading goes on from here.
    pub cursor: Cursor,
}

impl Gap {
    /// Where a reader that started from `asked` stood before this gap: `asked` itself when it
    /// was a position, else (a starting point such as `last:N` that the broker resolved) the
    /// position just before the first missed offset. Resuming from it gives the same gap
    /// again, where resuming from `last:N` would resolve anew and skip what came meanwhile.
    pub fn resumes_from(&self, asked: Cursor) -> Cursor {
        match (asked, self.reason, self.missed, self.cursor) {
            (Cursor::After(..), ..) => asked,
            (_, GapReason::Retention, Some(missed), Cursor::After(epoch, _)) => {
                Cursor::After(epoch, Offset(missed.first.0 - 1))
            }
            _ => asked,
        }
    }
}

/// One item of a subscription: a message, or a gap that says what was missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The next message.
    Message(Message),
    /// Messages that will never be delivered, and why.
    Gap(Gap),
}

impl Delivery {
    /// The topic it belongs to.
    pub fn topic(&self) -> &Topic {
        match self {
            Delivery::Message(m) => &m.topic,
            Delivery::Gap(g) => &g.topic,
        }
    }

    /// The cursor just after this delivery.
    pub fn cursor(&self) -> Cursor {
        match self {
            Delivery::Message(m) => m.cursor(),
            Delivery::Gap(g) => g.cursor,
        }
    }

    /// The position just before this delivery, when it says: a message's offset less one, a
    /// retention gap's first missed offset less one. `None` for an epoch change (the position
    /// before it is in the old epoch) and for a message at offset 0.
    pub fn before(&self) -> Option<Cursor> {
        match self {
            Delivery::Message(m) if m.offset.0 > 0 => {
                Some(Cursor::After(m.epoch, Offset(m.offset.0 - 1)))
            }
            Delivery::Message(_) => None,
            Delivery::Gap(gap) => {
                Some(gap.resumes_from(Cursor::Latest)).filter(Cursor::is_position)
            }
        }
    }

    /// The message, if this is one.
    pub fn as_message(&self) -> Option<&Message> {
        match self {
            Delivery::Message(m) => Some(m),
            Delivery::Gap(_) => None,
        }
    }

    /// The gap, if this is one.
    pub fn as_gap(&self) -> Option<&Gap> {
        match self {
            Delivery::Gap(g) => Some(g),
            Delivery::Message(_) => None,
        }
    }
}

/// The answer to one fetch: an optional gap, then messages in order, and where to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Messages missed between the requested cursor and the first message, if any.
    pub gap: Option<Gap>,
    /// Messages in offset order.
    pub messages: Vec<Message>,
    /// The cursor to fetch the next page from. Always an `After` cursor.
    pub next: Cursor,
}

impl Page {
    /// The page's deliveries in order: the gap first, if any, then the messages.
    pub fn into_deliveries(self) -> impl Iterator<Item = Delivery> {
        self.gap
            .map(Delivery::Gap)
            .into_iter()
            .chain(self.messages.into_iter().map(Delivery::Message))
    }

    /// Whether the page holds neither a gap nor a message.
    pub fn is_empty(&self) -> bool {
        self.gap.is_none() && self.messages.is_empty()
    }
}

/// What a client or broker can do, so callers (and the conformance suite) can adapt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The transport's or broker's name.
    pub name: &'static str,
    /// `publish` works.
    pub publish: bool,
    /// `fetch` works.
    pub fetch: bool,
    /// `subscribe` works.
    pub subscribe: bool,
    /// Messages are pushed by the server rather than polled for.
    pub push: bool,
    /// The largest payload accepted, if known.
    pub max_payload: Option<usize>,
}

impl Capabilities {
    /// Capabilities of something that can publish, fetch and subscribe.
    pub fn full(name: &'static str) -> Self {
        Self { name, publish: true, fetch: true, subscribe: true, push: false, max_payload: None }
    }

    /// Sets whether messages are pushed.
    pub fn with_push(mut self, push: bool) -> Self {
        self.push = push;
        self
    }

    /// Sets the largest payload accepted.
    pub fn with_max_payload(mut self, max: usize) -> Self {
        self.max_payload = Some(max);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_validation_names_the_problem() {
        let ok = Publication::new("x").event("price").content_type("text/plain; charset=utf-8");
        assert!(ok.validate(10).is_ok());
        let err = Publication::new(vec![0u8; 11]).validate(10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(err.to_string().contains("11 bytes"));
        let err = Publication::new("x").event("a\nb").validate(10).unwrap_err();
        assert!(err.to_string().contains("0x0a"), "{err}");
        let err = Publication::new("x").event("").validate(10).unwrap_err();
        assert!(err.to_string().contains("empty"));
    }

    #[test]
    fn an_encoding_is_made_once_and_shared_by_every_clone() {
        let topic = Topic::new("t").unwrap();
        let message = Publication::new("hello").into_message(topic, Epoch::from_u64(1), Offset(1));
        let clone = message.clone();
        let made = std::cell::Cell::new(0);
        let encode = || {
            made.set(made.get() + 1);
            Bytes::from_static(b"encoded")
        };
        static FORMAT: EncodingKey = EncodingKey::new();
        assert_eq!(message.encodings.get_or_encode(&FORMAT, encode), "encoded");
        assert_eq!(clone.encodings.get_or_encode(&FORMAT, encode), "encoded");
        assert_eq!(made.get(), 1, "the clone took the first encoding");
        // Another type in the same slot is never confused with it: it is made each time.
        assert_eq!(clone.encodings.get_or_encode(&FORMAT, || 7u32), 7);
        // Equality ignores encodings.
        let fresh = Message { encodings: Encodings::default(), ..message.clone() };
        assert_eq!(message, fresh);
    }
}
