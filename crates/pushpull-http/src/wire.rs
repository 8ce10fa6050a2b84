//! The JSON shapes shared by the HTTP transports: messages, pages, receipts and errors.
//! Pure encode and decode, no I/O.
//!
//! A payload that is valid UTF-8 travels as `"data"`, anything else as `"data_base64"`
//! (standard alphabet, padded), so text stays readable and binary stays exact.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use pushpull_core::{
    Cursor, Delivery, Epoch, Error, ErrorKind, Gap, GapReason, Message, Offset, OffsetRange, Page,
    Publication, Receipt, Topic, millis_since_unix_epoch, time_from_millis,
};
use serde::{Deserialize, Serialize};

/// One message as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageJson {
    /// Topic name.
    pub topic: Topic,
    /// Cursor just after this message.
    pub cursor: Cursor,
    /// Offset in the topic's log.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Payload media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The payload, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload in base64, when it is not UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// In framings that carry payloads beside the JSON (WebSocket binary frames): the payload's
    /// length in bytes, with neither `data` nor `data_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

/// A payload as JSON carries it: `data` when it is UTF-8 text, else `data_base64`.
fn text_or_base64(payload: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(payload))),
    }
}

impl MessageJson {
    /// The JSON form of `message`.
    pub fn from_message(message: &Message) -> Self {
        let (data, data_base64) = text_or_base64(&message.payload);
        Self {
            topic: message.topic.clone(),
            cursor: message.cursor(),
            offset: message.offset.0,
            timestamp: message.timestamp_millis(),
            event: message.event.as_deref().map(str::to_owned),
            content_type: message.content_type.as_deref().map(str::to_owned),
            data,
            data_base64,
            size: None,
        }
    }

    /// The JSON form of `message` without its payload, which travels beside it (`size` says
    /// how long it is).
    pub fn header_of(message: &Message) -> Self {
        Self {
            data: None,
            data_base64: None,
            size: Some(message.payload.len()),
            ..Self::from_message(&message.with_empty_payload())
        }
    }

    /// The message this JSON describes, with `payload` when the JSON carries none itself.
    pub fn into_message_with(mut self, payload: Bytes) -> Result<Message, Error> {
        self.data_base64 = None;
        self.data = Some(String::new());
        let mut message = self.into_message()?;
        message.payload = payload;
        Ok(message)
    }

    /// The message this JSON describes.
    pub fn into_message(self) -> Result<Message, Error> {
        let Cursor::After(epoch, Offset(offset)) = self.cursor else {
            return Err(protocol(format!(
                "a message's cursor must be EPOCH-OFFSET, got {}",
                self.cursor
            )));
        };
        if offset != self.offset {
            return Err(protocol(format!(
                "cursor {} disagrees with offset {}",
                self.cursor, self.offset
            )));
        }
        let payload = match (self.data, self.data_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => BASE64
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|e| protocol(format!("data_base64 is not base64: {e}")))?,
            (None, None) => {
                return Err(protocol("a message has neither data nor data_base64".into()));
            }
            (Some(_), Some(_)) => {
                return Err(protocol("a message has both data and data_base64".into()));
            }
        };
        Ok(Message {
            topic: self.topic,
            epoch,
            offset: Offset(offset),
            timestamp: time_from_millis(self.timestamp),
            event: self.event.map(Into::into),
            content_type: self.content_type.map(Into::into),
            payload,
            encodings: Default::default(),
        })
    }
}

/// A gap as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GapJson {
    /// Topic name.
    pub topic: Topic,
    /// `retention` or `epoch_changed`.
    pub reason: String,
    /// For `epoch_changed`: the epoch of the reader's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_epoch: Option<String>,
    /// First missed offset in the current epoch, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// Last missed offset in the current epoch, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    /// Where the reader stands after the gap.
    pub cursor: Cursor,
}

impl GapJson {
    /// The JSON form of `gap`.
    pub fn from_gap(gap: &Gap) -> Self {
        let previous_epoch = match gap.reason {
            GapReason::EpochChanged { previous } => Some(previous.to_string()),
            GapReason::Retention => None,
        };
        Self {
            topic: gap.topic.clone(),
            reason: gap.reason.as_str().to_owned(),
            previous_epoch,
            first: gap.missed.map(|r| r.first.0),
            last: gap.missed.map(|r| r.last.0),
            cursor: gap.cursor,
        }
    }

    /// The gap this JSON describes.
    pub fn into_gap(self) -> Result<Gap, Error> {
        let reason = match (self.reason.as_str(), self.previous_epoch) {
            ("retention", None) => GapReason::Retention,
            ("epoch_changed", Some(previous)) => GapReason::EpochChanged {
                previous: previous
                    .parse::<Epoch>()
                    .map_err(|e| protocol(e.message().to_owned()))?,
            },
            (reason, _) => {
                return Err(protocol(format!("unknown or incomplete gap reason {reason:?}")));
            }
        };
        let missed = match (self.first, self.last) {
            (Some(first), Some(last)) if first <= last => {
                Some(OffsetRange { first: Offset(first), last: Offset(last) })
            }
            (None, None) => None,
            _ => {
                return Err(protocol("a gap's first and last offsets do not make a range".into()));
            }
        };
        Ok(Gap { topic: self.topic, reason, missed, cursor: self.cursor })
    }
}

/// A page as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageJson {
    /// Missed messages before the first one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<GapJson>,
    /// Messages in order.
    pub messages: Vec<MessageJson>,
    /// Cursor for the next request.
    pub next: Cursor,
}

/// Encodes a page as compact JSON.
pub fn encode_page(page: &Page) -> Vec<u8> {
    let json = PageJson {
        gap: page.gap.as_ref().map(GapJson::from_gap),
        messages: page.messages.iter().map(MessageJson::from_message).collect(),
        next: page.next,
    };
    serde_json::to_vec(&json).expect("a page always encodes")
}

/// Decodes a page.
pub fn decode_page(body: &[u8]) -> Result<Page, Error> {
    let json: PageJson =
        serde_json::from_slice(body).map_err(|e| protocol(format!("bad page JSON: {e}")))?;
    Ok(Page {
        gap: json.gap.map(GapJson::into_gap).transpose()?,
        messages: json
            .messages
            .into_iter()
            .map(MessageJson::into_message)
            .collect::<Result<_, _>>()?,
        next: json.next,
    })
}

/// A page of many topics' JSON (`{"gaps":[…],"messages":[…],"next":"@…"}`): its deliveries,
/// each topic's gap before its messages, and `next`.
pub fn decode_many_page(body: &[u8]) -> Result<(Vec<Delivery>, String), Error> {
    #[derive(Deserialize)]
    struct ManyPageJson {
        #[serde(default)]
        gaps: Vec<GapJson>,
        messages: Vec<MessageJson>,
        next: String,
    }
    let json: ManyPageJson =
        serde_json::from_slice(body).map_err(|e| protocol(format!("bad page JSON: {e}")))?;
    let mut deliveries = Vec::with_capacity(json.gaps.len() + json.messages.len());
    for gap in json.gaps {
        deliveries.push(Delivery::Gap(gap.into_gap()?));
    }
    for message in json.messages {
        deliveries.push(Delivery::Message(message.into_message()?));
    }
    Ok((deliveries, json.next))
}

/// A publish receipt as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptJson {
    /// Topic name.
    pub topic: Topic,
    /// Cursor just after the published message.
    pub cursor: Cursor,
    /// Offset assigned.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Subscriptions following the topic when it was published, where the broker knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<u64>,
}

impl ReceiptJson {
    /// The JSON of `receipt`.
    pub fn of(receipt: &Receipt) -> Self {
        Self {
            topic: receipt.topic.clone(),
            cursor: receipt.cursor(),
            offset: receipt.offset.0,
            timestamp: millis_since_unix_epoch(receipt.timestamp),
            subscribers: receipt.subscribers,
        }
    }
}

/// Encodes a receipt.
pub fn encode_receipt(receipt: &Receipt) -> Vec<u8> {
    serde_json::to_vec(&ReceiptJson::of(receipt)).expect("a receipt always encodes")
}

/// Decodes a receipt.
pub fn decode_receipt(body: &[u8]) -> Result<Receipt, Error> {
    let json: ReceiptJson =
        serde_json::from_slice(body).map_err(|e| protocol(format!("bad receipt JSON: {e}")))?;
    match json.cursor {
        Cursor::After(epoch, offset) if offset.0 == json.offset => Ok(Receipt {
            topic: json.topic,
            epoch,
            offset,
            timestamp: time_from_millis(json.timestamp),
            subscribers: json.subscribers,
        }),
        other => {
            Err(protocol(format!("receipt cursor {other} does not match offset {}", json.offset)))
        }
    }
}

/// The body of every error response: `{"error":{"kind":"…","message":"…"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// An [`ErrorKind`] wire name, or `not_found` / `method_not_allowed` for routing errors.
    pub kind: String,
    /// One line saying what was wrong.
    pub message: String,
}

/// Encodes an error body.
pub fn encode_error(kind: &str, message: &str) -> Vec<u8> {
    let body =
        ErrorBody { error: ErrorDetail { kind: kind.to_owned(), message: message.to_owned() } };
    serde_json::to_vec(&body).expect("an error always encodes")
}

/// Decodes an error body, if `body` is one.
pub fn decode_error(body: &[u8]) -> Option<ErrorDetail> {
    serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error)
}

fn protocol(message: String) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::Publication;

    fn message(payload: &'static [u8]) -> Message {
        Publication::new(payload).event("e").into_message(
            Topic::new("t").unwrap(),
            Epoch::random(),
            Offset(7),
        )
    }

    #[test]
    fn text_stays_text_and_binary_is_base64() {
        let text = MessageJson::from_message(&message(b"caf\xc3\xa9"));
        assert_eq!(text.data.as_deref(), Some("café"));
        let binary = MessageJson::from_message(&message(b"\xff\x00"));
        assert_eq!(binary.data_base64.as_deref(), Some("/wA="));
    }

    #[test]
    fn pages_round_trip() {
        let m = message(b"\x00\x01\xfe\xff");
        let gap = Gap {
            topic: m.topic.clone(),
            reason: GapReason::EpochChanged { previous: Epoch::random() },
            missed: Some(OffsetRange { first: Offset(1), last: Offset(6) }),
            cursor: Cursor::After(m.epoch, Offset(6)),
        };
        let page = Page { gap: Some(gap), messages: vec![m.clone()], next: m.cursor() };
        let mut decoded = decode_page(&encode_page(&page)).unwrap();
        // Timestamps travel in milliseconds.
        decoded.messages[0].timestamp = m.timestamp;
        assert_eq!(decoded, page);
    }

    #[test]
    fn malformed_pages_are_protocol_errors() {
        for body in [
            &b"{}"[..],
            br#"{"messages":[],"next":"nope"}"#,
            br#"{"messages":[{"topic":"t","cursor":"0123456789abcdef-2","offset":3,"timestamp":0,"data":"x"}],"next":"latest"}"#,
            br#"{"messages":[{"topic":"t","cursor":"0123456789abcdef-3","offset":3,"timestamp":0}],"next":"latest"}"#,
        ] {
            assert_eq!(decode_page(body).unwrap_err().kind(), ErrorKind::Protocol);
        }
    }
}

/// One publication of a batch (`POST /v1/publish`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicationJson {
    /// The topic.
    pub topic: String,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload in base64 (standard alphabet, padded), for bytes that are not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// The event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The payload's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl PublicationJson {
    /// The JSON of `publication` to `topic`: UTF-8 payloads as `data`, others as `data_base64`.
    pub fn from_publication(topic: &Topic, publication: &Publication) -> Self {
        let (data, data_base64) = text_or_base64(publication.payload());
        Self {
            topic: topic.to_string(),
            data,
            data_base64,
            event: publication.event_type().map(str::to_owned),
            content_type: publication.media_type().map(str::to_owned),
            idempotency_key: publication.key().map(str::to_owned),
        }
    }

    /// The topic and the publication, or what is wrong with them.
    pub fn into_publication(self) -> Result<(Topic, Publication), Error> {
        let topic = Topic::new(&self.topic)?;
        let payload = match (self.data, self.data_base64) {
            (Some(text), None) => bytes::Bytes::from(text),
            (None, Some(encoded)) => bytes::Bytes::from(
                BASE64
                    .decode(encoded)
                    .map_err(|e| Error::bad_request(format!("data_base64 is not base64: {e}")))?,
            ),
            (None, None) => bytes::Bytes::new(),
            (Some(_), Some(_)) => {
                return Err(Error::bad_request("give data or data_base64, not both"));
            }
        };
        let publication = crate::request::publication(
            payload,
            self.event.as_deref(),
            self.content_type.as_deref(),
            self.idempotency_key.as_deref(),
        );
        Ok((topic, publication))
    }
}

/// A batch of publications: `{"publications":[…]}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchJson {
    /// The publications, in order.
    pub publications: Vec<PublicationJson>,
}

/// The answer to one publication of a batch: its receipt, or its error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchResultJson {
    /// Stored.
    Receipt(ReceiptJson),
    /// Not stored, and why.
    Error(ErrorBody),
}

impl BatchResultJson {
    /// The receipt, or the error (made by `error` from its kind and message).
    pub fn into_result(
        self,
        error: impl FnOnce(ErrorKind, String) -> Error,
    ) -> Result<Receipt, Error> {
        match self {
            BatchResultJson::Receipt(json) => {
                decode_receipt(&serde_json::to_vec(&json).expect("a receipt encodes"))
            }
            BatchResultJson::Error(body) => {
                let kind = ErrorKind::from_wire(&body.error.kind).unwrap_or(ErrorKind::Backend);
                Err(error(kind, body.error.message))
            }
        }
    }
}

/// The answer to a batch: `{"results":[…]}`, one per publication, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchAnswerJson {
    /// The results.
    pub results: Vec<BatchResultJson>,
}
