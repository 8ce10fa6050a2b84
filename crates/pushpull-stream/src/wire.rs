//! The record formats of a stream, and incremental decoders that take chunks split at any byte.
//! Pure, no I/O. `docs/protocol/stream.md` in the repository describes both formats.
//!
//! # NDJSON (`application/x-ndjson`, the default)
//!
//! One compact JSON object per line, with a `type`: `start`, `message` (the HTTP API's message
//! JSON), `gap` (the HTTP API's gap JSON) or `heartbeat`.
//!
//! # Binary (`application/vnd.pushpull.stream`)
//!
//! ```text
//! +--------------------+--------------------------+----------------------+-----------------+
//! | header len: u32 BE | header: JSON (as NDJSON, | payload len: u64 BE  | payload bytes   |
//! |                    | without data fields)     |                      |                 |
//! +--------------------+--------------------------+----------------------+-----------------+
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pushpull_core::{Cursor, Delivery, EncodingKey, Error, ErrorKind, Gap, Message};
use pushpull_http::wire::{GapJson, MessageJson};
use serde::{Deserialize, Serialize};

/// The media type of newline-delimited JSON records.
pub const NDJSON: &str = "application/x-ndjson";
/// The media type of length-prefixed binary records.
pub const BINARY: &str = "application/vnd.pushpull.stream";
/// The most bytes a payload is written in at once: larger payloads go out as zero-copy slices
/// of this size, so nothing in the server holds a second copy of a large payload.
pub const CHUNK: usize = 64 * 1024;
/// The longest header (or NDJSON line) a decoder accepts before the payload.
pub const MAX_HEADER: usize = 1024 * 1024;

/// One record of a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first record: where the stream starts.
    Start {
        /// The starting position, `latest` and `beginning` resolved.
        cursor: Cursor,
    },
    /// The first record of a stream of many topics: the cursor set it starts at. A reader
    /// resumes with it, each topic's entry moved to the cursor of that topic's last record.
    Cursors {
        /// The cursor set's text (`@…`).
        cursors: String,
    },
    /// A message.
    Message(MessageJson),
    /// Messages missed.
    Gap(GapJson),
    /// Nothing new; the stream is alive.
    Heartbeat,
}

/// Which format a stream is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Newline-delimited JSON.
    Ndjson,
    /// Length-prefixed binary records.
    Binary,
}

impl Framing {
    /// The framing an `Accept` header asks for: binary when it names [`BINARY`].
    pub fn from_accept(accept: Option<&str>) -> Framing {
        match accept {
            Some(accept) if accept.split(',').any(|t| t.trim().starts_with(BINARY)) => {
                Framing::Binary
            }
            _ => Framing::Ndjson,
        }
    }

    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => NDJSON,
            Framing::Binary => BINARY,
        }
    }
}

/// The chunks of one delivery's record: a header, then the payload in slices of at most
/// [`CHUNK`] bytes that share the payload's memory.
pub fn encode(delivery: &Delivery, framing: Framing) -> Vec<Bytes> {
    match delivery {
        Delivery::Message(message) => encode_message(message, framing),
        Delivery::Gap(gap) => vec![encode_plain(&Record::Gap(GapJson::from_gap(gap)), framing)],
    }
}

/// The record of anything without a payload (start, gap, heartbeat).
pub fn encode_plain(record: &Record, framing: Framing) -> Bytes {
    let json = serde_json::to_vec(record).expect("records encode");
    match framing {
        Framing::Ndjson => {
            let mut line = json;
            line.push(b'\n');
            Bytes::from(line)
        }
        Framing::Binary => {
            let mut out = BytesMut::with_capacity(json.len() + 12);
            out.put_u32(json.len() as u32);
            out.put_slice(&json);
            out.put_u64(0);
            out.freeze()
        }
    }
}

/// A message's NDJSON record, made once and shared by every stream pushing it.
static NDJSON_RECORD: EncodingKey = EncodingKey::new();
/// A message's binary record head (the payload follows it as is).
static BINARY_HEAD: EncodingKey = EncodingKey::new();

fn encode_message(message: &Message, framing: Framing) -> Vec<Bytes> {
    match framing {
        // Encoded once per message, shared by every stream that pushes it.
        Framing::Ndjson => vec![message.encodings.get_or_encode(&NDJSON_RECORD, || {
            let mut line = serde_json::to_vec(&Record::Message(MessageJson::from_message(message)))
                .expect("records encode");
            line.push(b'\n');
            Bytes::from(line)
        })],
        Framing::Binary => {
            let head = message.encodings.get_or_encode(&BINARY_HEAD, || {
                let header = serde_json::to_vec(&Record::Message(MessageJson::header_of(message)))
                    .expect("records encode");
                let mut head = BytesMut::with_capacity(header.len() + 12);
                head.put_u32(header.len() as u32);
                head.put_slice(&header);
                head.put_u64(message.payload.len() as u64);
                head.freeze()
            });
            let mut chunks = vec![head];
            let payload = &message.payload;
            chunks.extend(
                (0..payload.len())
                    .step_by(CHUNK)
                    .map(|at| payload.slice(at..(at + CHUNK).min(payload.len()))),
            );
            chunks
        }
    }
}

/// An incremental decoder of a stream's bytes. Memory held: at most one chunk of input beyond
/// the record being read, and for a binary message one buffer of exactly its payload's size.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    max_payload: usize,
    buffer: BytesMut,
    /// Binary framing: a header read, waiting for its payload of this many bytes.
    awaiting: Option<(Record, usize)>,
    payload: BytesMut,
}

impl Decoder {
    /// A decoder for `framing` that refuses payloads declared larger than `max_payload`.
    pub fn new(framing: Framing, max_payload: usize) -> Self {
        Self {
            framing,
            max_payload,
            buffer: BytesMut::new(),
            awaiting: None,
            payload: BytesMut::new(),
        }
    }

    /// Feeds a chunk; returns the records it completed, each with its payload (binary framing).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<(Record, Option<Bytes>)>, Error> {
        match self.framing {
            Framing::Ndjson => self.feed_lines(chunk),
            Framing::Binary => self.feed_binary(chunk),
        }
    }

    fn feed_lines(&mut self, chunk: &[u8]) -> Result<Vec<(Record, Option<Bytes>)>, Error> {
        let mut records = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.buffer.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = self.buffer.split();
            if !line.is_empty() {
                let record = serde_json::from_slice(&line)
                    .map_err(|e| protocol(format!("a record is not JSON: {e}")))?;
                records.push((record, None));
            }
        }
        let limit = MAX_HEADER.max(self.max_payload.saturating_mul(2));
        if self.buffer.len() + rest.len() > limit {
            return Err(protocol(format!("a record is longer than {limit} bytes")));
        }
        self.buffer.extend_from_slice(rest);
        Ok(records)
    }

    fn feed_binary(&mut self, chunk: &[u8]) -> Result<Vec<(Record, Option<Bytes>)>, Error> {
        let mut records = Vec::new();
        self.buffer.extend_from_slice(chunk);
        loop {
            if let Some((_, size)) = &self.awaiting {
                let take = (*size - self.payload.len()).min(self.buffer.len());
                self.payload.extend_from_slice(&self.buffer[..take]);
                self.buffer.advance(take);
                if self.payload.len() < *size {
                    return Ok(records);
                }
                let (record, _) = self.awaiting.take().expect("awaiting");
                records.push((record, Some(self.payload.split().freeze())));
                continue;
            }
            if self.buffer.len() < 4 {
                return Ok(records);
            }
            let header = u32::from_be_bytes(self.buffer[..4].try_into().expect("4 bytes")) as usize;
            if header > MAX_HEADER {
                return Err(protocol(format!(
                    "a record header of {header} bytes is over {MAX_HEADER}"
                )));
            }
            if self.buffer.len() < 4 + header + 8 {
                return Ok(records);
            }
            self.buffer.advance(4);
            let json = self.buffer.split_to(header);
            let size = usize::try_from(self.buffer.get_u64()).unwrap_or(usize::MAX);
            if size > self.max_payload {
                return Err(protocol(format!(
                    "a payload of {size} bytes is over the limit of {}",
                    self.max_payload
                )));
            }
            let record: Record = serde_json::from_slice(&json)
                .map_err(|e| protocol(format!("a record header is not JSON: {e}")))?;
            if size == 0 {
                records.push((record, Some(Bytes::new())));
            } else {
                self.payload = BytesMut::with_capacity(size);
                self.awaiting = Some((record, size));
            }
        }
    }
}

fn protocol(message: String) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

/// The delivery a record carries, if it carries one (start and heartbeat records do not).
pub fn delivery(record: Record, payload: Option<Bytes>) -> Result<Option<Delivery>, Error> {
    match record {
        Record::Message(json) => {
            let message = match payload {
                Some(payload) if json.size.is_some() => json.into_message_with(payload)?,
                _ => json.into_message()?,
            };
            Ok(Some(Delivery::Message(message)))
        }
        Record::Gap(json) => Ok(Some(Delivery::Gap(json.into_gap()?))),
        Record::Start { .. } | Record::Cursors { .. } | Record::Heartbeat => Ok(None),
    }
}

/// A gap record's gap.
pub fn gap_of(json: GapJson) -> Result<Gap, Error> {
    json.into_gap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Epoch, GapReason, Offset, OffsetRange, Publication, Topic};

    fn deliveries() -> Vec<Delivery> {
        let topic = Topic::new("t").unwrap();
        let epoch = Epoch::from_u64(9);
        let message = |payload: Vec<u8>, offset| {
            let mut message = Publication::new(payload).event("e").into_message(
                topic.clone(),
                epoch,
                Offset(offset),
            );
            // Timestamps travel in milliseconds; a fixed one keeps the fixtures equal.
            message.timestamp = pushpull_core::time_from_millis(1_795_000_000_000);
            Delivery::Message(message)
        };
        vec![
            message("ünïcødé ✓ 🚀 line\nbreak".as_bytes().to_vec(), 1),
            Delivery::Gap(Gap {
                topic: topic.clone(),
                reason: GapReason::Retention,
                missed: Some(OffsetRange { first: Offset(2), last: Offset(4) }),
                cursor: Cursor::After(epoch, Offset(4)),
            }),
            message(vec![0xff, 0x00, 0xfe], 5),
            message((0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect(), 6),
            message(Vec::new(), 7),
        ]
    }

    fn stream(framing: Framing) -> Vec<u8> {
        let mut bytes = encode_plain(&Record::Start { cursor: Cursor::Latest }, framing).to_vec();
        for delivery in deliveries() {
            for chunk in encode(&delivery, framing) {
                bytes.extend_from_slice(&chunk);
            }
            bytes.extend_from_slice(&encode_plain(&Record::Heartbeat, framing));
        }
        bytes
    }

    fn decode(bytes: &[u8], framing: Framing, cut: impl Fn(usize) -> usize) -> Vec<Delivery> {
        let mut decoder = Decoder::new(framing, 1 << 30);
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + cut(at)).min(bytes.len());
            for (record, payload) in decoder.feed(&bytes[at..end]).unwrap() {
                out.extend(delivery(record, payload).unwrap());
            }
            at = end;
        }
        out
    }

    #[test]
    fn records_survive_any_split_in_both_framings() {
        for framing in [Framing::Ndjson, Framing::Binary] {
            let bytes = stream(framing);
            let expected = deliveries();
            // Terse on failure: the fixtures hold a payload of 192 KiB.
            let same = |got: Vec<Delivery>| got == expected;
            assert!(same(decode(&bytes, framing, |_| bytes.len())), "{framing:?} whole");
            // Every split point of the small records (inside multi-byte characters too).
            for cut in 1..300 {
                let got = decode(&bytes, framing, |at| if at == 0 { cut } else { bytes.len() });
                assert!(same(got), "{framing:?} cut at {cut}");
            }
            // Byte by byte over the start of the stream, then in odd-sized pieces.
            let got = decode(&bytes, framing, |at| if at < 400 { 1 } else { 7919 });
            assert!(same(got), "{framing:?} in small pieces");
        }
    }

    #[test]
    fn large_payloads_are_written_as_slices_of_the_same_memory() {
        let payload = Bytes::from(vec![7u8; 5 * CHUNK + 3]);
        let message = Publication::new(payload.clone()).into_message(
            Topic::new("t").unwrap(),
            Epoch::from_u64(1),
            Offset(1),
        );
        let chunks = encode(&Delivery::Message(message), Framing::Binary);
        assert_eq!(chunks.len(), 1 + 6, "a header and six slices");
        assert!(chunks[1..].iter().all(|c| c.len() <= CHUNK));
        // Slices point into the payload's own buffer: no copy was made.
        assert_eq!(chunks[1].as_ptr(), payload.as_ptr());
    }

    #[test]
    fn hostile_input_is_refused_without_allocating_it() {
        let mut header = Vec::new();
        let json = br#"{"type":"heartbeat"}"#;
        header.extend_from_slice(&(json.len() as u32).to_be_bytes());
        header.extend_from_slice(json);
        header.extend_from_slice(&u64::MAX.to_be_bytes());
        let error = Decoder::new(Framing::Binary, 1024).feed(&header).unwrap_err();
        assert!(error.message().contains("over the limit"), "{error}");
        let error = Decoder::new(Framing::Binary, 1024).feed(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(error.message().contains("header"), "{error}");
        let error = Decoder::new(Framing::Ndjson, 1024).feed(b"{not json}\n").unwrap_err();
        assert!(error.message().contains("not JSON"), "{error}");
    }
}
