//! The WebSocket protocol's frames: JSON in text frames, and a length-prefixed framing in
//! binary frames for payloads that are not UTF-8 text. Pure encode and decode, no I/O.
//! `docs/protocol/websocket.md` in the repository is the full description.
//!
//! # Binary frames
//!
//! ```text
//! +----------------------+----------------------------+---------------------------+
//! | header length: u32BE | header: JSON, that many B  | payload bytes (the rest)  |
//! +----------------------+----------------------------+---------------------------+
//! ```
//!
//! The header is the JSON object the text frame would carry, without `data`/`data_base64`; a
//! message header has `size`, and a page's payloads follow one after another in message order,
//! each as long as its message's `size`.

use bytes::{BufMut, Bytes, BytesMut};
use pushpull_core::{Delivery, Error, ErrorKind, Gap, Message, Page, Publication, Receipt, Topic};
use pushpull_http::wire::{
    BatchResultJson, GapJson, MessageJson, PageJson, PublicationJson, ReceiptJson,
};
use serde::{Deserialize, Serialize};

/// The subprotocol name that versions this protocol.
pub const SUBPROTOCOL: &str = "pushpull.v1";
/// The longest request id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// The name that the frames of an unnamed server-decided subscription carry. A client's names
/// may not start with `@` or hold a `*`: those are the server's (an unnamed prefix
/// subscription's frames carry its prefix, `orders:*`).
pub const GRANTED: &str = "@token";

/// A request from client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start pushing `topic`'s messages from `after` (default `latest`).
    Subscribe {
        /// Request id, echoed in the answer.
        id: String,
        /// The topic, or a prefix (`orders:*`); without one, what the socket's token may read
        /// (a server-decided subscription).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// `beginning`, `latest` or a cursor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// A name for the subscription, so that one socket can hold several on one topic;
        /// every frame of a named subscription carries it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        /// What the subscription, as a member of the topic's presence, tells the other members
        /// about itself: a small JSON value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<serde_json::Value>,
    },
    /// Who follows `topic`: its members and its presence log's cursor (`presence`), or with
    /// `stats`, only how many (`presence_stats`).
    Presence {
        /// Request id.
        id: String,
        /// The topic.
        topic: String,
        /// Only the counts.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stats: bool,
    },
    /// Stop pushing `topic` (the subscription named `sub`, if given).
    Unsubscribe {
        /// Request id.
        id: String,
        /// The topic or prefix; none for the server-decided subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The subscription's name, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
    },
    /// Append a message.
    Publish {
        /// Request id.
        id: String,
        /// The topic.
        topic: String,
        /// Event type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Payload media type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        /// Idempotency key: a retry with the same key is stored once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Text payload (text frames).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// Base64 payload (text frames).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_base64: Option<String>,
    },
    /// Append many messages, to one topic or many, one after another: each one's receipt or
    /// error comes back, in order, in one `published_many`.
    PublishMany {
        /// Request id.
        id: String,
        /// The publications, as in the HTTP API's batch (`data` or `data_base64`).
        publications: Vec<PublicationJson>,
    },
    /// Take a new token in place, before the socket's token expires: checked as at the
    /// upgrade, for the same subject, granting every subscription the socket holds; the
    /// socket's rights and expiry become the new token's.
    Refresh {
        /// Request id.
        id: String,
        /// The new token.
        token: String,
    },
    /// Read a page.
    Fetch {
        /// Request id.
        id: String,
        /// The topic.
        topic: String,
        /// `beginning` (default), `latest` or a cursor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many messages (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
}

impl Request {
    /// The request id.
    pub fn id(&self) -> &str {
        match self {
            Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Publish { id, .. }
            | Request::PublishMany { id, .. }
            | Request::Refresh { id, .. }
            | Request::Presence { id, .. }
            | Request::Fetch { id, .. } => id,
        }
    }
}

/// A frame from server to client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// A subscription started at `cursor`.
    Subscribed {
        /// The request id.
        id: String,
        /// The topic, or prefix (`orders:*`); none for a server-decided subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The subscription's name: the one it was given; without one, a prefix
        /// subscription's prefix, and a server-decided one's [`GRANTED`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        /// Where it starts (`latest` and `beginning` resolved); for a prefix, the cursor set
        /// (`@…`, relative to the prefix alone) of the topics it follows; for a server-decided
        /// subscription, the set that names its topics (`@=…`).
        cursor: String,
    },
    /// A subscription ended: on request (with its id), or because the server ended it
    /// (with a reason).
    Unsubscribed {
        /// The request id, when asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The topic, or prefix; none for a server-decided subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The subscription's name, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        /// Why the server ended it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A message was stored.
    Published {
        /// The request id.
        id: String,
        /// Where it stands.
        #[serde(flatten)]
        receipt: ReceiptJson,
    },
    /// The answers to a `publish_many`, in order.
    PublishedMany {
        /// The request id.
        id: String,
        /// Each publication's receipt, or its error (`{"error":{"kind","message"}}`).
        results: Vec<BatchResultJson>,
    },
    /// The socket took the new token.
    Refreshed {
        /// The request id.
        id: String,
        /// When the new token expires (seconds since the epoch), if it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires: Option<u64>,
    },
    /// A topic's members and its presence log's cursor: reading `.presence:TOPIC` from the
    /// cursor gives every join and leave since.
    Presence {
        /// The request id.
        id: String,
        /// The snapshot.
        #[serde(flatten)]
        snapshot: pushpull_core::PresenceSnapshot,
    },
    /// How many follow a topic.
    PresenceStats {
        /// The request id.
        id: String,
        /// The topic.
        topic: Topic,
        /// The counts.
        #[serde(flatten)]
        stats: pushpull_core::PresenceStats,
    },
    /// A page of messages.
    Page {
        /// The request id.
        id: String,
        /// The topic.
        topic: Topic,
        /// The page, as in the HTTP API.
        #[serde(flatten)]
        page: PageJson,
    },
    /// A pushed message.
    Message(Pushed<MessageJson>),
    /// A pushed gap.
    Gap(Pushed<GapJson>),
    /// A request failed (the socket stays open).
    Error {
        /// The request id, when one could be read.
        #[serde(default)]
        id: Option<String>,
        /// The topic (or prefix), for errors of a subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The subscription's name, for errors of a named subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        /// An error kind's wire name.
        kind: String,
        /// What was wrong.
        message: String,
    },
}

/// A pushed message or gap, with the name of the subscription it belongs to when that has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed<T> {
    /// The subscription's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The message or gap, as in the HTTP API.
    #[serde(flatten)]
    pub item: T,
}

/// A frame ready to send: text or binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("frames always encode")
}

fn binary(header: &impl Serialize, payloads: &[&Bytes]) -> Frame {
    let header = serde_json::to_vec(header).expect("frames always encode");
    let size: usize = payloads.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(4 + header.len() + size);
    out.put_u32(u32::try_from(header.len()).expect("headers are small"));
    out.put_slice(&header);
    for payload in payloads {
        out.put_slice(payload);
    }
    Frame::Binary(out.freeze())
}

/// Splits a binary frame into its JSON header and the bytes after it.
pub fn split_binary(frame: &Bytes) -> Result<(serde_json::Value, Bytes), String> {
    if frame.len() < 4 {
        return Err("a binary frame starts with a 4-byte header length".into());
    }
    let length = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let end = 4usize.checked_add(length).filter(|end| *end <= frame.len()).ok_or_else(|| {
        format!("the header length {length} runs past the frame's {} bytes", frame.len())
    })?;
    let header = serde_json::from_slice(&frame[4..end])
        .map_err(|e| format!("the header is not JSON: {e}"))?;
    Ok((header, frame.slice(end..)))
}

/// The frame pushing one delivery of the subscription named `sub` (if it has a name): text
/// when the payload is UTF-8, binary otherwise.
pub fn delivery_frame(delivery: &Delivery, sub: Option<&str>) -> Frame {
    let sub = sub.map(str::to_owned);
    match delivery {
        Delivery::Gap(gap) => {
            Frame::Text(json(&Reply::Gap(Pushed { sub, item: GapJson::from_gap(gap) })))
        }
        Delivery::Message(message) if message.text().is_some() => {
            Frame::Text(json(&Reply::Message(Pushed {
                sub,
                item: MessageJson::from_message(message),
            })))
        }
        Delivery::Message(message) => binary(
            &Reply::Message(Pushed { sub, item: MessageJson::header_of(message) }),
            &[&message.payload],
        ),
    }
}

/// The frame answering a fetch: text when every payload is UTF-8, binary otherwise.
pub fn page_frame(id: &str, topic: &Topic, page: &Page) -> Frame {
    let gap = page.gap.as_ref().map(GapJson::from_gap);
    if page.messages.iter().all(|m| m.text().is_some()) {
        let messages = page.messages.iter().map(MessageJson::from_message).collect();
        let page = PageJson { gap, messages, next: page.next };
        return Frame::Text(json(&Reply::Page { id: id.into(), topic: topic.clone(), page }));
    }
    let messages = page.messages.iter().map(MessageJson::header_of).collect();
    let payloads: Vec<&Bytes> = page.messages.iter().map(|m| &m.payload).collect();
    let page = PageJson { gap, messages, next: page.next };
    binary(&Reply::Page { id: id.into(), topic: topic.clone(), page }, &payloads)
}

/// The frame of any other reply.
pub fn reply_frame(reply: &Reply) -> Frame {
    Frame::Text(json(reply))
}

/// The error reply for `error` (of the subscription to `topic` named `sub`, if any).
pub fn error_reply(
    id: Option<&str>,
    topic: Option<&str>,
    sub: Option<&str>,
    error: &Error,
) -> Reply {
    Reply::Error {
        id: id.map(str::to_owned),
        topic: topic.map(str::to_owned),
        sub: sub.map(str::to_owned),
        kind: error.kind().as_str().to_owned(),
        message: error.message().to_owned(),
    }
}

/// The receipt reply.
pub fn published(id: &str, receipt: &Receipt) -> Reply {
    let body = pushpull_http::wire::encode_receipt(receipt);
    let receipt = serde_json::from_slice(&body).expect("a receipt round-trips");
    Reply::Published { id: id.into(), receipt }
}

/// The frame publishing `publication`: text with `data` when the payload is UTF-8, binary
/// otherwise.
pub fn publish_frame(id: &str, topic: &Topic, publication: &Publication) -> Frame {
    let text = std::str::from_utf8(publication.payload()).ok();
    let request = Request::Publish {
        id: id.into(),
        topic: topic.to_string(),
        event: publication.event_type().map(str::to_owned),
        content_type: publication.media_type().map(str::to_owned),
        key: publication.key().map(str::to_owned),
        data: text.map(str::to_owned),
        data_base64: None,
    };
    match text {
        Some(_) => Frame::Text(json(&request)),
        None => binary(&request, &[publication.payload()]),
    }
}

/// A request as it arrived, with its payload when the frame was binary.
#[derive(Debug)]
pub struct Incoming {
    /// The request.
    pub request: Request,
    /// The payload that followed a binary frame's header.
    pub payload: Option<Bytes>,
}

/// Why a frame could not be read as a request: the id, if one could be read, and what was wrong.
#[derive(Debug)]
pub struct BadRequest {
    /// The request id, when the frame had a readable one.
    pub id: Option<String>,
    /// The error to report.
    pub error: Error,
}

/// Reads a request from a text frame.
pub fn parse_text(text: &str) -> Result<Incoming, BadRequest> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        error: Error::bad_request(format!("the frame is not JSON: {e}")),
    })?;
    Ok(Incoming { request: request(value)?, payload: None })
}

/// Reads a request from a binary frame.
pub fn parse_binary(frame: &Bytes) -> Result<Incoming, BadRequest> {
    let (header, payload) = split_binary(frame)
        .map_err(|why| BadRequest { id: None, error: Error::bad_request(why) })?;
    Ok(Incoming { request: request(header)?, payload: Some(payload) })
}

fn request(value: serde_json::Value) -> Result<Request, BadRequest> {
    let id = value.get("id").and_then(|id| id.as_str()).map(str::to_owned);
    let bad = |message: String| BadRequest { id: id.clone(), error: Error::bad_request(message) };
    if !value.is_object() {
        return Err(bad("a request is a JSON object".into()));
    }
    if value.get("op").is_none() {
        return Err(bad("missing field `op`".into()));
    }
    let request: Request = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    if request.id().is_empty() || request.id().len() > MAX_ID_LEN {
        return Err(bad(format!("id must be 1 to {MAX_ID_LEN} bytes")));
    }
    if let Request::Subscribe { sub: Some(sub), .. } | Request::Unsubscribe { sub: Some(sub), .. } =
        &request
        && (sub.is_empty() || sub.len() > MAX_ID_LEN || sub.starts_with('@') || sub.contains('*'))
    {
        return Err(bad(format!(
            "sub must be 1 to {MAX_ID_LEN} bytes, without '*' and not starting with '@' \
             (those name prefix and server-decided subscriptions)"
        )));
    }
    Ok(request)
}

/// What a client makes of one frame from the server.
pub fn parse_reply(frame: Frame) -> Result<(Reply, Option<Bytes>), Error> {
    let protocol = |why: String| Error::new(ErrorKind::Protocol, why);
    match frame {
        Frame::Text(text) => serde_json::from_str(&text)
            .map(|reply| (reply, None))
            .map_err(|e| protocol(format!("a server frame did not parse: {e}"))),
        Frame::Binary(bytes) => {
            let (header, payload) = split_binary(&bytes).map_err(protocol)?;
            let reply = serde_json::from_value(header)
                .map_err(|e| protocol(format!("a binary frame's header did not parse: {e}")))?;
            Ok((reply, Some(payload)))
        }
    }
}

/// The message of a `message` reply, with the payload of its binary frame, if any.
pub fn message_of(json: MessageJson, payload: Option<Bytes>) -> Result<Message, Error> {
    match payload {
        Some(payload) => json.into_message_with(payload),
        None => json.into_message(),
    }
}

/// The page of a `page` reply, with the payloads of its binary frame, if any.
pub fn page_of(json: PageJson, payloads: Option<Bytes>) -> Result<Page, Error> {
    let mut rest = payloads;
    let mut messages = Vec::with_capacity(json.messages.len());
    for message in json.messages {
        let message = match (&mut rest, message.size) {
            (Some(rest), Some(size)) if size <= rest.len() => {
                let payload = rest.split_to(size);
                message.into_message_with(payload)?
            }
            (Some(_), _) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "a binary page's sizes do not match its payloads",
                ));
            }
            (None, _) => message.into_message()?,
        };
        messages.push(message);
    }
    Ok(Page { gap: json.gap.map(GapJson::into_gap).transpose()?, messages, next: json.next })
}

/// The gap of a `gap` reply.
pub fn gap_of(json: GapJson) -> Result<Gap, Error> {
    json.into_gap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Cursor, Epoch, Offset};

    fn topic() -> Topic {
        Topic::new("t").unwrap()
    }

    fn message(payload: &'static [u8], offset: u64) -> Message {
        Publication::new(payload).event("e").into_message(
            topic(),
            Epoch::from_u64(7),
            Offset(offset),
        )
    }

    #[test]
    fn text_payloads_go_in_text_frames_and_binary_ones_without_base64() {
        let Frame::Text(text) = delivery_frame(&Delivery::Message(message(b"hello", 1)), None)
        else {
            panic!("text payloads go as text");
        };
        assert!(text.contains("\"op\":\"message\"") && text.contains("\"data\":\"hello\""));
        assert!(!text.contains("\"sub\""), "an unnamed subscription's frames do not");
        let payload: &[u8] = &[0xff, 0, 1, 2, 3];
        let Frame::Binary(bytes) =
            delivery_frame(&Delivery::Message(message(b"\xff\x00\x01\x02\x03", 2)), Some("s2"))
        else {
            panic!("binary payloads go as binary");
        };
        assert!(bytes.ends_with(payload), "the payload is raw at the end");
        let (reply, rest) = parse_reply(Frame::Binary(bytes)).unwrap();
        let Reply::Message(json) = reply else { panic!("a message") };
        assert_eq!(json.sub.as_deref(), Some("s2"), "a named subscription's frames carry it");
        assert_eq!(message_of(json.item, rest).unwrap().payload, payload);
    }

    #[test]
    fn binary_pages_carry_sizes_and_payloads_in_order() {
        let page = Page {
            gap: None,
            messages: vec![message(b"text", 1), message(b"\xff\xfe", 2), message(b"", 3)],
            next: Cursor::After(Epoch::from_u64(7), Offset(3)),
        };
        let frame = page_frame("f1", &topic(), &page);
        assert!(matches!(frame, Frame::Binary(_)));
        let (reply, rest) = parse_reply(frame).unwrap();
        let Reply::Page { id, page: json, .. } = reply else { panic!("a page") };
        assert_eq!(id, "f1");
        let decoded = page_of(json, rest).unwrap();
        let payloads: Vec<&[u8]> = decoded.messages.iter().map(|m| m.payload.as_ref()).collect();
        assert_eq!(payloads, [&b"text"[..], b"\xff\xfe", b""]);
    }

    #[test]
    fn publish_frames_round_trip() {
        for payload in [&b"plain"[..], b"\x00\xff"] {
            let publication = Publication::new(payload.to_vec()).event("e").idempotency_key("k1");
            let incoming = match publish_frame("p1", &topic(), &publication) {
                Frame::Text(text) => parse_text(&text).unwrap(),
                Frame::Binary(bytes) => parse_binary(&bytes).unwrap(),
            };
            let Request::Publish { id, key, data, .. } = &incoming.request else {
                panic!("publish")
            };
            assert_eq!((id.as_str(), key.as_deref()), ("p1", Some("k1")));
            let got = incoming.payload.clone().or_else(|| data.clone().map(Bytes::from)).unwrap();
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong_and_keep_the_id() {
        let cases = [
            ("not json", None, "not JSON"),
            ("[1,2]", None, "JSON object"),
            (r#"{"id":"a1"}"#, Some("a1"), "missing field `op`"),
            (r#"{"op":"dance","id":"a2"}"#, Some("a2"), "unknown variant `dance`"),
            (r#"{"op":"subscribe","id":"a3","sub":"*"}"#, Some("a3"), "without '*'"),
            (r#"{"op":"subscribe","id":"a3","sub":"@token"}"#, Some("a3"), "not starting with '@'"),
            (r#"{"op":"subscribe","topic":"t"}"#, None, "missing field `id`"),
            (r#"{"op":"fetch","id":"a4","topic":"t","limit":"ten"}"#, Some("a4"), "invalid type"),
            (
                r#"{"op":"fetch","id":"a5","topic":"t","colour":"red"}"#,
                Some("a5"),
                "unknown field `colour`",
            ),
            (r#"{"op":"fetch","id":"","topic":"t"}"#, Some(""), "id must be"),
        ];
        for (text, id, says) in cases {
            let bad = parse_text(text).unwrap_err();
            assert_eq!(bad.id.as_deref(), id, "{text}");
            assert_eq!(bad.error.kind(), ErrorKind::BadRequest);
            assert!(bad.error.message().contains(says), "{text}: {}", bad.error);
        }
        for frame in [&b"\x00\x00"[..], b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02no"] {
            let bad = parse_binary(&Bytes::from_static(frame)).unwrap_err();
            assert_eq!(bad.error.kind(), ErrorKind::BadRequest, "{frame:?}");
        }
    }
}
