//! The line protocol: one JSON object per line, both ways. Pure encode and decode.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use pushpull_core::{
    Cursor, Delivery, Epoch, Error, ErrorKind, Gap, GapReason, Message, Offset, OffsetRange, Page,
    Receipt, Topic, millis_since_unix_epoch, time_from_millis,
};
use serde::{Deserialize, Serialize};

/// A request, from client to server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Store a message.
    Publish {
        /// The topic.
        topic: String,
        /// The payload, base64.
        payload: String,
        /// Event type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Media type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        /// Idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Read a page.
    Fetch {
        /// The topic.
        topic: String,
        /// Where to start.
        after: Cursor,
        /// At most this many.
        limit: usize,
    },
    /// Follow a topic: the connection carries its deliveries from then on.
    Subscribe {
        /// The topic.
        topic: String,
        /// Where to start.
        after: Cursor,
    },
}

/// An answer, from server to client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A publish was stored.
    Receipt(WireReceipt),
    /// A page.
    Page {
        /// What was missed, if anything.
        gap: Option<WireGap>,
        /// The messages.
        messages: Vec<WireMessage>,
        /// Where to go on from.
        next: Cursor,
    },
    /// A subscription starts after this cursor.
    Subscribed(Cursor),
    /// A pushed message.
    Message(WireMessage),
    /// A pushed gap.
    Gap(WireGap),
    /// The request failed.
    Error {
        /// The error kind's wire name.
        kind: String,
        /// What was wrong.
        message: String,
        /// Whether a retry can help.
        retryable: bool,
    },
}

/// A receipt on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireReceipt {
    topic: Topic,
    cursor: Cursor,
    timestamp: u64,
}

/// A message on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireMessage {
    topic: Topic,
    cursor: Cursor,
    timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    payload: String,
}

/// A gap on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireGap {
    topic: Topic,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    missed: Option<(u64, u64)>,
    cursor: Cursor,
}

fn protocol(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Protocol, format!("line protocol: {why}"))
}

fn position(cursor: Cursor) -> Result<(Epoch, Offset), Error> {
    match cursor {
        Cursor::After(epoch, offset) => Ok((epoch, offset)),
        other => Err(protocol(format!("{other} is not a position"))),
    }
}

impl WireReceipt {
    /// The wire form of `receipt`.
    pub fn from_receipt(receipt: &Receipt) -> Self {
        Self {
            topic: receipt.topic.clone(),
            cursor: receipt.cursor(),
            timestamp: millis_since_unix_epoch(receipt.timestamp),
        }
    }

    /// The receipt.
    pub fn into_receipt(self) -> Result<Receipt, Error> {
        let (epoch, offset) = position(self.cursor)?;
        Ok(Receipt {
            topic: self.topic,
            epoch,
            offset,
            timestamp: time_from_millis(self.timestamp),
            subscribers: None,
        })
    }
}

impl WireMessage {
    /// The wire form of `message`.
    pub fn from_message(message: &Message) -> Self {
        Self {
            topic: message.topic.clone(),
            cursor: message.cursor(),
            timestamp: message.timestamp_millis(),
            event: message.event.as_deref().map(str::to_owned),
            content_type: message.content_type.as_deref().map(str::to_owned),
            payload: BASE64.encode(&message.payload),
        }
    }

    /// The message.
    pub fn into_message(self) -> Result<Message, Error> {
        let (epoch, offset) = position(self.cursor)?;
        let payload = BASE64.decode(self.payload).map_err(protocol)?;
        Ok(Message {
            topic: self.topic,
            epoch,
            offset,
            timestamp: time_from_millis(self.timestamp),
            event: self.event.map(Into::into),
            content_type: self.content_type.map(Into::into),
            payload: Bytes::from(payload),
            encodings: Default::default(),
        })
    }
}

impl WireGap {
    /// The wire form of `gap`.
    pub fn from_gap(gap: &Gap) -> Self {
        Self {
            topic: gap.topic.clone(),
            previous_epoch: match gap.reason {
                GapReason::EpochChanged { previous } => Some(previous.to_string()),
                GapReason::Retention => None,
            },
            missed: gap.missed.map(|m| (m.first.0, m.last.0)),
            cursor: gap.cursor,
        }
    }

    /// The gap.
    pub fn into_gap(self) -> Result<Gap, Error> {
        let reason = match self.previous_epoch {
            Some(previous) => GapReason::EpochChanged { previous: previous.parse()? },
            None => GapReason::Retention,
        };
        let missed = self
            .missed
            .map(|(first, last)| OffsetRange { first: Offset(first), last: Offset(last) });
        Ok(Gap { topic: self.topic, reason, missed, cursor: self.cursor })
    }
}

/// The answer for a delivery.
pub fn delivery(delivery: &Delivery) -> Answer {
    match delivery {
        Delivery::Message(message) => Answer::Message(WireMessage::from_message(message)),
        Delivery::Gap(gap) => Answer::Gap(WireGap::from_gap(gap)),
    }
}

/// The answer for a page.
pub fn page(page: &Page) -> Answer {
    Answer::Page {
        gap: page.gap.as_ref().map(WireGap::from_gap),
        messages: page.messages.iter().map(WireMessage::from_message).collect(),
        next: page.next,
    }
}

/// The answer for an error.
pub fn error(error: &Error) -> Answer {
    Answer::Error {
        kind: error.kind().as_str().to_owned(),
        message: error.message().to_owned(),
        retryable: error.is_retryable(),
    }
}

/// The error an error answer carries.
pub fn error_of(kind: &str, message: String, retryable: bool) -> Error {
    let kind = ErrorKind::from_wire(kind).unwrap_or(ErrorKind::Protocol);
    Error::new(kind, message).with_retryable(retryable).with_transport(crate::NAME)
}

/// One line of `value`, newline included.
pub fn line(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("wire types encode");
    bytes.push(b'\n');
    bytes
}

/// Reads one answer line.
pub fn answer(line: &str) -> Result<Answer, Error> {
    serde_json::from_str(line).map_err(protocol)
}

/// The payload of a publish request.
pub fn payload(base64: &str) -> Result<Bytes, Error> {
    BASE64
        .decode(base64)
        .map(Bytes::from)
        .map_err(|e| Error::bad_request(format!("payload is not base64: {e}")))
}

/// The base64 form of a payload.
pub fn encode_payload(payload: &[u8]) -> String {
    BASE64.encode(payload)
}
