//! The event-stream format: encoding messages as events, and a parser that follows the WHATWG
//! HTML "interpreting an event stream" rules. Pure, no I/O.
//!
//! # Encoding
//!
//! ```text
//! retry: 1000                       sent once, first, with the id of the starting position
//! id: 0f3a9c1d2b4e5f60-0
//!
//! id: 0f3a9c1d2b4e5f60-1            the message's cursor: EventSource resumes with it
//! event: price                      only when the message has an event type
//! timestamp: 1795437103580          extension fields, ignored by EventSource
//! content-type: text/plain          only when set
//! data: 42.17                       one data line per payload line
//!
//! event: pushpull-gap               a gap: its own named event, JSON data
//! id: 0f3a9c1d2b4e5f60-7
//! data: {"topic":"t","reason":"retention","first":3,"last":7,"cursor":"0f3a9c1d2b4e5f60-7"}
//!
//! :                                 a heartbeat comment
//! ```
//!
//! A payload that is UTF-8 text without carriage returns goes as it is, split into `data:` lines
//! at each line feed (EventSource joins them back with line feeds). Anything else — bytes that
//! are not UTF-8, or text with CR, which the format cannot carry — goes as one `data:` line of
//! standard base64, marked by the extension field `encoding: base64`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use pushpull_core::{
    Cursor, Delivery, Error, ErrorKind, Gap, Message, Offset, Topic, time_from_millis,
};
use pushpull_http::wire::GapJson;

/// The event type of gaps. Event types starting with `pushpull-` are reserved.
pub const GAP_EVENT: &str = "pushpull-gap";
/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";
/// A heartbeat: a comment line, which every parser ignores.
pub const HEARTBEAT: &[u8] = b":\n\n";

const TIMESTAMP_FIELD: &str = "timestamp";
const CONTENT_TYPE_FIELD: &str = "content-type";
const ENCODING_FIELD: &str = "encoding";

/// The first bytes of a stream: the reconnection time, and the starting position as an id, so
/// a client that drops before the first message still resumes from where it started.
pub fn preamble(start: &str, retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\nid: {start}\n\n", retry.as_millis()))
}

/// The field that names a delivery's topic on a stream of many topics (EventSource ignores
/// it; pushpull's clients read it).
pub const TOPIC_FIELD: &str = "topic";

/// One topic's `event` (a message's or a gap's, as [`encode_message`] and [`encode_gap`] make
/// it, `id:` first) for a stream of many topics: its `id:` line replaced by the cursor set
/// `token`, and a `topic:` field. The rest of the event is the shared encoding itself, not a
/// copy.
pub fn with_token(event: Bytes, topic: &pushpull_core::Topic, token: &str) -> Vec<Bytes> {
    let rest = match event.iter().position(|&b| b == b'\n') {
        Some(end) if event.starts_with(b"id:") => event.slice(end + 1..),
        _ => event,
    };
    let mut head = BytesMut::with_capacity(token.len() + topic.as_str().len() + 16);
    field(&mut head, "id", token);
    field(&mut head, TOPIC_FIELD, topic.as_str());
    vec![head.freeze(), rest]
}

/// The `topic:` line that names an event's topic on a stream of many topics whose ids are the
/// messages' own cursors (`event_ids=message`): written before the shared event itself.
pub fn topic_field(topic: &Topic) -> Bytes {
    let mut line = BytesMut::with_capacity(topic.as_str().len() + 8);
    field(&mut line, TOPIC_FIELD, topic.as_str());
    line.freeze()
}

/// The event of one message.
pub fn encode_message(message: &Message) -> Bytes {
    let text = std::str::from_utf8(&message.payload).ok().filter(|t| !t.contains('\r'));
    let mut out = BytesMut::with_capacity(message.payload.len() + 96);
    field(&mut out, "id", &message.cursor().to_string());
    if let Some(event) = &message.event {
        field(&mut out, "event", event);
    }
    field(&mut out, TIMESTAMP_FIELD, &message.timestamp_millis().to_string());
    if let Some(content_type) = &message.content_type {
        field(&mut out, CONTENT_TYPE_FIELD, content_type);
    }
    match text {
        Some(text) => {
            for line in text.split('\n') {
                field(&mut out, "data", line);
            }
        }
        None => {
            field(&mut out, ENCODING_FIELD, "base64");
            field(&mut out, "data", &BASE64.encode(&message.payload));
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The event of one gap.
pub fn encode_gap(gap: &Gap) -> Bytes {
    let json = serde_json::to_string(&GapJson::from_gap(gap)).expect("a gap encodes");
    let mut out = BytesMut::with_capacity(json.len() + 64);
    field(&mut out, "id", &gap.cursor.to_string());
    field(&mut out, "event", GAP_EVENT);
    field(&mut out, "data", &json);
    out.put_u8(b'\n');
    out.freeze()
}

fn field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The event type: `message` unless an `event` field said otherwise.
    pub event_type: String,
    /// The data lines joined with line feeds.
    pub data: String,
    /// The last event ID at dispatch.
    pub last_event_id: String,
    /// Fields the specification does not define, in order (EventSource ignores them).
    pub extensions: Vec<(String, String)>,
}

impl Event {
    /// The value of an extension field.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An incremental parser of `text/event-stream` bytes, fed chunks split anywhere. What it
/// holds is bounded: an event (its data, fields and current line) longer than its limit is an
/// error, not an ever-growing buffer.
#[derive(Debug, Default)]
pub struct Parser {
    /// The most bytes one event may hold.
    limit: usize,
    /// Bytes held for the current event.
    held: usize,
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The first bytes, held until it is known whether they are a byte order mark.
    head: Option<Vec<u8>>,
    /// The previous chunk ended with CR: a LF starting the next one belongs to it.
    after_cr: bool,
    data: String,
    event_type: String,
    id_buffer: String,
    last_event_id: String,
    retry: Option<u64>,
    extensions: Vec<(String, String)>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The most bytes one event may hold by default: room for the largest payload a server takes
/// by default (4 MiB), base64-encoded, many times over.
pub const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

impl Parser {
    /// A parser at the start of a stream, with the default limit of [`MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }

    /// A parser whose events may hold at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self { head: Some(Vec::new()), limit, ..Self::default() }
    }

    /// The last event ID: what to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time the stream asked for, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry.map(Duration::from_millis)
    }

    /// Feeds a chunk; returns the events it completed. An event cut off by the end of the
    /// stream is never returned. An event over the limit is a `too_large` error; the parser
    /// drops it and reads on from the next one.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        match self.head.take() {
            None => self.feed_lines(chunk, &mut events)?,
            Some(mut head) => {
                head.extend_from_slice(chunk);
                if head.len() < BOM.len() && BOM.starts_with(&head) {
                    self.head = Some(head); // could still be a BOM
                } else {
                    let body = head.strip_prefix(BOM).unwrap_or(&head);
                    self.feed_lines(body, &mut events)?;
                }
            }
        }
        Ok(events)
    }

    fn feed_lines(&mut self, chunk: &[u8], events: &mut Vec<Event>) -> Result<(), Error> {
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\n' if after_cr => {}
                b'\n' => self.end_line(events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(events);
                }
                _ => {
                    self.held += 1;
                    if self.held > self.limit {
                        let limit = self.limit;
                        self.line.clear();
                        self.skip_event();
                        return Err(Error::new(
                            ErrorKind::TooLarge,
                            format!("an event of the stream holds more than {limit} bytes"),
                        ));
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    /// Forgets the event being read.
    fn skip_event(&mut self) {
        self.data.clear();
        self.event_type.clear();
        self.extensions.clear();
        self.held = 0;
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let bytes = std::mem::take(&mut self.line);
        if bytes.first() == Some(&b':') {
            // A comment (a heartbeat) holds nothing.
            self.held -= bytes.len();
            return;
        }
        let line = String::from_utf8_lossy(&bytes).into_owned();
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match name {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "id" => {}
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            "retry" => {}
            other => self.extensions.push((other.to_owned(), value.to_owned())),
        }
    }

    fn dispatch(&mut self, events: &mut Vec<Event>) {
        self.held = 0;
        self.last_event_id.clone_from(&self.id_buffer);
        let extensions = std::mem::take(&mut self.extensions);
        let event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event_type = if event_type.is_empty() { "message".to_owned() } else { event_type };
        events.push(Event {
            event_type,
            data,
            last_event_id: self.last_event_id.clone(),
            extensions,
        });
    }
}

/// The delivery an event of a stream of many topics carries: its topic from the `topic:`
/// field, and a message's cursor from its `id:`: the cursor set (relative to `keys`), or with
/// `event_ids=message` the message's own.
pub fn decode_many(keys: &[pushpull_core::Selector], mut event: Event) -> Result<Delivery, Error> {
    let protocol = |why: String| Error::new(ErrorKind::Protocol, why);
    let topic: Topic = event
        .extension(TOPIC_FIELD)
        .ok_or_else(|| protocol("an event of a stream of many topics has no topic field".into()))?
        .parse()
        .map_err(|e: Error| protocol(format!("the topic field: {}", e.message())))?;
    // With `event_ids=message` the id is the message's own cursor already.
    if event.event_type != GAP_EVENT && pushpull_core::CursorSet::is_set(&event.last_event_id) {
        let set = pushpull_core::CursorSet::parse(&event.last_event_id, keys)
            .map_err(|e| protocol(format!("event id: {}", e.message())))?;
        let cursor = set.get(&topic).ok_or_else(|| {
            protocol(format!("the event's id has no position for its topic {topic}"))
        })?;
        event.last_event_id = cursor.to_string();
    }
    decode_event(&topic, event)
}

/// The delivery an event of `topic` carries.
pub fn decode_event(topic: &Topic, event: Event) -> Result<Delivery, Error> {
    let protocol = |why: String| Error::new(ErrorKind::Protocol, why);
    if event.event_type == GAP_EVENT {
        let json: GapJson = serde_json::from_str(&event.data)
            .map_err(|e| protocol(format!("bad gap event data: {e}")))?;
        return Ok(Delivery::Gap(json.into_gap()?));
    }
    let cursor: Cursor = event
        .last_event_id
        .parse()
        .map_err(|e: Error| protocol(format!("event id: {}", e.message())))?;
    let Cursor::After(epoch, offset) = cursor else {
        return Err(protocol(format!("a message's id must be EPOCH-OFFSET, got {cursor}")));
    };
    let payload = match event.extension(ENCODING_FIELD) {
        None => Bytes::from(event.data.clone()),
        Some("base64") => BASE64
            .decode(event.data.trim())
            .map(Bytes::from)
            .map_err(|e| protocol(format!("base64 data does not decode: {e}")))?,
        Some(other) => return Err(protocol(format!("unknown encoding {other:?}"))),
    };
    let timestamp = event
        .extension(TIMESTAMP_FIELD)
        .and_then(|t| t.parse().ok())
        .map(time_from_millis)
        .unwrap_or_else(std::time::SystemTime::now);
    let event_type = (event.event_type != "message").then(|| event.event_type.as_str().into());
    Ok(Delivery::Message(Message {
        topic: topic.clone(),
        epoch,
        offset: Offset(offset.0),
        timestamp,
        event: event_type,
        content_type: event.extension(CONTENT_TYPE_FIELD).map(Into::into),
        payload,
        encodings: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Epoch, GapReason, OffsetRange, Publication};

    fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<Event>, Parser) {
        let mut parser = Parser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            events.extend(parser.feed(&input[start..cut]).unwrap());
            start = cut;
        }
        (events, parser)
    }

    fn parse(input: &[u8]) -> Vec<Event> {
        parse_in_pieces(input, &[]).0
    }

    #[test]
    fn same_events_wherever_the_chunks_split() {
        let input = "\u{feff}id: 1\r\nevent: a\r\ndata: x\r\ndata:y\r\rdata: ü\n\n".as_bytes();
        let whole = parse(input);
        assert_eq!(whole.len(), 2);
        for cut in 0..input.len() {
            assert_eq!(parse_in_pieces(input, &[cut]).0, whole, "cut at {cut}");
        }
        for cut in 0..input.len() {
            let cuts: Vec<usize> = (cut..input.len()).step_by(2).collect();
            assert_eq!(parse_in_pieces(input, &cuts).0, whole, "cuts from {cut}");
        }
    }

    #[test]
    fn a_bom_is_stripped_once_even_split() {
        let input = b"\xEF\xBB\xBFdata: a\n\n";
        for cut in 0..4 {
            let (events, _) = parse_in_pieces(input, &[cut]);
            assert_eq!(events[0].data, "a", "cut at {cut}");
        }
        // A second BOM is not stripped: it starts a field name no one knows.
        let events = parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "b");
    }

    #[test]
    fn cr_lf_and_crlf_all_end_lines() {
        for input in
            [&b"data: a\rdata: b\r\r"[..], b"data: a\ndata: b\n\n", b"data: a\r\ndata: b\r\n\r\n"]
        {
            let events = parse(input);
            assert_eq!(events.len(), 1, "{input:?}");
            assert_eq!(events[0].data, "a\nb");
        }
        // A CRLF split across two chunks is one line end, not two (which would dispatch).
        let (events, _) = parse_in_pieces(b"data: a\r\ndata: b\r\n\r\n", &[8]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a\nb");
    }

    #[test]
    fn field_value_rules() {
        let events = parse(b"data:x\n\ndata:  two spaces\n\ndata\n\n");
        assert_eq!(events[0].data, "x", "no space after the colon");
        assert_eq!(events[1].data, " two spaces", "only one space is removed");
        assert_eq!(events[2].data, "", "a bare field name has an empty value");
        let events = parse(b": comment\ndata: a\n: another\n\n");
        assert_eq!(events[0].data, "a");
    }

    #[test]
    fn id_rules() {
        let (events, parser) = parse_in_pieces(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n", &[]);
        assert_eq!(events[0].last_event_id, "1");
        assert_eq!(events[1].last_event_id, "1", "an id with NUL is ignored");
        assert_eq!(parser.last_event_id(), "1");
        let (events, parser) = parse_in_pieces(b"id: 1\ndata: a\n\nid\ndata: b\n\n", &[]);
        assert_eq!(events[1].last_event_id, "", "an empty id resets");
        assert_eq!(parser.last_event_id(), "");
        // An id in a block without data still becomes the last event id.
        let (events, parser) = parse_in_pieces(b"id: 7\n\n", &[]);
        assert!(events.is_empty());
        assert_eq!(parser.last_event_id(), "7");
    }

    #[test]
    fn retry_rules() {
        let (_, parser) = parse_in_pieces(b"retry: 2500\n\n", &[]);
        assert_eq!(parser.retry(), Some(Duration::from_millis(2500)));
        for bad in [&b"retry: 25x\n\n"[..], b"retry: -1\n\n", b"retry: 1.5\n\n", b"retry:\n\n"] {
            let (_, parser) = parse_in_pieces(bad, &[]);
            assert_eq!(parser.retry(), None, "{bad:?}");
        }
    }

    #[test]
    fn event_type_and_dispatch_rules() {
        let events = parse(
            b"event: price\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\nevent: x\n\ndata: 4\n\n",
        );
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["price", "message", "message", "message"],
            "the type resets, also without data"
        );
        // Cut off by the end of the stream: never dispatched.
        assert!(parse(b"data: unfinished\n").is_empty());
        assert!(parse(b"data: unfinished").is_empty());
    }

    #[test]
    fn messages_round_trip_through_the_format() {
        let topic = Topic::new("t").unwrap();
        let epoch = Epoch::random();
        let payloads: [&[u8]; 6] =
            [b"plain", b"", b"two\nlines\n", b"cr\r\nlf", b"\xff\x00binary", b" leading space"];
        for (n, payload) in payloads.into_iter().enumerate() {
            let message = Publication::new(payload.to_vec())
                .event("e")
                .content_type("application/octet-stream")
                .into_message(topic.clone(), epoch, Offset(n as u64 + 1));
            let events = parse(&encode_message(&message));
            assert_eq!(events.len(), 1);
            let Delivery::Message(decoded) = decode_event(&topic, events[0].clone()).unwrap()
            else {
                panic!("not a message");
            };
            assert_eq!(decoded.payload, message.payload, "payload {payload:?}");
            assert_eq!((decoded.epoch, decoded.offset), (epoch, message.offset));
            assert_eq!(decoded.event.as_deref(), Some("e"));
            assert_eq!(decoded.content_type.as_deref(), Some("application/octet-stream"));
            assert_eq!(decoded.timestamp_millis(), message.timestamp_millis());
        }
    }

    #[test]
    fn gaps_round_trip_as_named_events() {
        let topic = Topic::new("t").unwrap();
        let epoch = Epoch::random();
        let gap = Gap {
            topic: topic.clone(),
            reason: GapReason::EpochChanged { previous: Epoch::random() },
            missed: Some(OffsetRange { first: Offset(1), last: Offset(4) }),
            cursor: Cursor::After(epoch, Offset(4)),
        };
        let events = parse(&encode_gap(&gap));
        assert_eq!(events[0].event_type, GAP_EVENT);
        assert_eq!(events[0].last_event_id, gap.cursor.to_string());
        assert_eq!(decode_event(&topic, events[0].clone()).unwrap(), Delivery::Gap(gap));
    }

    #[test]
    fn the_preamble_sets_the_id_without_an_event() {
        let cursor = Cursor::After(Epoch::random(), Offset(0));
        let (events, parser) =
            parse_in_pieces(&preamble(&cursor.to_string(), Duration::from_millis(1500)), &[]);
        assert!(events.is_empty());
        assert_eq!(parser.last_event_id(), cursor.to_string());
        assert_eq!(parser.retry(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn an_event_over_the_limit_is_an_error_and_the_next_one_still_reads() {
        let mut parser = Parser::with_limit(16);
        // Heartbeats hold nothing, however many arrive between events.
        for _ in 0..100 {
            assert!(parser.feed(b": keep-alive\n").unwrap().is_empty());
        }
        let error = parser.feed(b"data: this line is much longer than sixteen").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TooLarge);
        let events = parser.feed(b"\n\ndata: ok\n\n").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "ok");
    }
}
