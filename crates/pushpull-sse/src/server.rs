//! The server half: `GET /v1/topics/{topic}/events`, one `text/event-stream` per subscriber.

use bytes::Bytes;
use pushpull_core::{Cursor, Delivery, EncodingKey, Error, ErrorKind};
use pushpull_http::{
    Fanned, HttpRequest, PushFormat, PushServer, PushTransport, Start, query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{
    CONTENT_TYPE, HEARTBEAT, encode_gap, encode_message, preamble, topic_field, with_token,
};

/// The route of a topic's event stream.
pub const EVENTS_PATH: &str = "/v1/topics/{topic}/events";
/// The route of an event stream of many topics: `?topic=` repeated (names, `PREFIX*`), or
/// none for what the token may read.
pub const MANY_EVENTS_PATH: &str = "/v1/events";

/// The SSE server over a broker: a cheap-`Clone` tower (and hyper) service serving publishing,
/// pages and event streams; its [`routes`](PushServer::routes) mount event streams beside other
/// transports'.
///
/// A stream starts where `Last-Event-ID` says (a browser's EventSource sends it when it
/// reconnects), else where `?after=` says, else at `latest`. It reads the broker's shared log
/// by cursor and writes only as fast as the client reads, so a client that stops reading
/// costs a bounded buffer and, once retention passes it, gets a gap instead of unbounded memory.
pub type SseServer = PushServer<Sse>;

/// Server-Sent Events as a [`PushTransport`]: what [`SseServer`] serves.
#[derive(Debug)]
pub struct Sse;

/// A message's `text/event-stream` event, made once and shared by every stream pushing it.
static EVENT: EncodingKey = EncodingKey::new();

impl PushTransport for Sse {
    const NAME: &'static str = crate::NAME;
    const PATH: &'static str = EVENTS_PATH;
    const MANY_PATH: &'static str = MANY_EVENTS_PATH;
    type Config = ServerConfig;

    fn check(config: &ServerConfig) -> Result<(), Error> {
        config.validate()
    }

    fn start(request: &HttpRequest) -> Result<Cursor, Error> {
        start_cursor(request)
    }

    fn resume(request: &HttpRequest) -> Result<Option<String>, Error> {
        // Checked here, before the stream starts, so a bad value is a 400.
        message_ids(request)?;
        match last_event_id(request)? {
            Some(id) => Ok(Some(id.to_owned())),
            None => request::resume_text(request),
        }
    }

    fn format(config: &ServerConfig, request: &HttpRequest, start: Start<'_>) -> PushFormat {
        let first = match start {
            Start::One(cursor) => preamble(&cursor.to_string(), config.retry),
            Start::Many(token) => preamble(token, config.retry),
        };
        if let (Start::Many(_), Ok(true)) = (start, message_ids(request)) {
            // `event_ids=message`: each event's id is its own cursor, and the client keeps
            // the set (pushpull's clients do): no set in every event.
            return PushFormat {
                content_type: CONTENT_TYPE,
                first,
                encode: Box::new(|delivery, _| {
                    vec![topic_field(delivery.topic()), event_of(delivery)]
                }),
                heartbeat_chunk: Bytes::from_static(HEARTBEAT),
                heartbeat: config.heartbeat,
                writes_token: false,
                fanout: None,
            };
        }
        PushFormat {
            content_type: CONTENT_TYPE,
            first,
            encode: Box::new(|delivery, token| {
                let event = event_of(delivery);
                match token {
                    None => vec![event],
                    // Many topics: the event names its topic, and its id is the cursor set.
                    Some(token) => with_token(event, delivery.topic(), token),
                }
            }),
            heartbeat_chunk: Bytes::from_static(HEARTBEAT),
            heartbeat: config.heartbeat,
            writes_token: true,
            // A stream of one topic writes each event as it is shared: a fan-out may write it.
            fanout: match (start, config.fanout) {
                (Start::One(_), true) => Some(Fanned { style: "sse", encode: event_of }),
                _ => None,
            },
        }
    }
}

/// A delivery's event: a message's is made once and shared by every stream pushing it.
fn event_of(delivery: &Delivery) -> Bytes {
    match delivery {
        Delivery::Message(message) => {
            message.encodings.get_or_encode(&EVENT, || encode_message(message))
        }
        Delivery::Gap(gap) => encode_gap(gap),
    }
}

/// Whether a stream of many topics asks `event_ids=message` (each event's id its message's
/// own cursor) rather than `set` (the default: the cursor set, which EventSource resumes with
/// by itself).
fn message_ids(req: &HttpRequest) -> Result<bool, Error> {
    match query_params(req).get("event_ids").map(String::as_str) {
        None | Some("set") => Ok(false),
        Some("message") => Ok(true),
        Some(other) => Err(Error::bad_request(format!(
            "event_ids={other:?}: expected \"set\" (the default) or \"message\""
        ))),
    }
}

/// `Last-Event-ID` first (it is newer: EventSource repeats the original URL when it
/// reconnects), then `?after=`, then `latest`.
fn start_cursor(req: &HttpRequest) -> Result<Cursor, Error> {
    if let Some(id) = last_event_id(req)? {
        return id.parse().map_err(|e: Error| {
            Error::new(ErrorKind::InvalidCursor, format!("Last-Event-ID: {}", e.message()))
        });
    }
    request::cursor(req, &query_params(req), Cursor::Latest)
}

/// The `Last-Event-ID` header, when present and not empty.
fn last_event_id(req: &HttpRequest) -> Result<Option<&str>, Error> {
    let Some(id) = req.headers().get("last-event-id") else { return Ok(None) };
    let id = id.to_str().map_err(|_| {
        Error::new(ErrorKind::InvalidCursor, "the Last-Event-ID header is not ASCII")
    })?;
    Ok((!id.is_empty()).then_some(id))
}
