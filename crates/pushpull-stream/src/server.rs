//! The server half: `GET /v1/topics/{topic}/stream`, one long chunked response per reader.

use http::header;
use pushpull_core::{Cursor, Error};
use pushpull_http::{
    Fanned, HttpRequest, PushFormat, PushServer, PushTransport, Start, query_params, request,
};

use crate::config::ServerConfig;
use crate::wire::{Framing, Record, encode, encode_plain};

/// The route of a topic's stream.
pub const STREAM_PATH: &str = "/v1/topics/{topic}/stream";
/// The route of a stream of many topics: `?topic=` repeated (names, `PREFIX*`), or none for
/// what the token may read.
pub const MANY_STREAM_PATH: &str = "/v1/stream";

/// The streaming server over a broker: a cheap-`Clone` tower (and hyper) service serving
/// publishing, pages and streams; its [`routes`](PushServer::routes) mount streams beside other
/// transports'.
///
/// A stream starts at `?after=` (or `Pushpull-Cursor`), else `latest`, with a `start` record;
/// then a record per message or gap, flushed as it is read from the log, and a heartbeat
/// record when idle. `Accept: application/vnd.pushpull.stream` picks binary records; anything
/// else gets NDJSON. Like every push transport here, it writes only as fast as the reader
/// reads, and a reader left behind by retention gets a gap.
pub type StreamServer = PushServer<Stream>;

/// Chunked streaming as a [`PushTransport`]: what [`StreamServer`] serves.
#[derive(Debug)]
pub struct Stream;

impl PushTransport for Stream {
    const NAME: &'static str = crate::NAME;
    const PATH: &'static str = STREAM_PATH;
    const MANY_PATH: &'static str = MANY_STREAM_PATH;
    type Config = ServerConfig;

    fn check(config: &ServerConfig) -> Result<(), Error> {
        config.validate()
    }

    fn start(request: &HttpRequest) -> Result<Cursor, Error> {
        request::cursor(request, &query_params(request), Cursor::Latest)
    }

    fn format(config: &ServerConfig, request: &HttpRequest, start: Start<'_>) -> PushFormat {
        let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let framing = Framing::from_accept(accept);
        PushFormat {
            content_type: framing.content_type(),
            first: match start {
                Start::One(cursor) => encode_plain(&Record::Start { cursor }, framing),
                Start::Many(token) => {
                    encode_plain(&Record::Cursors { cursors: token.to_owned() }, framing)
                }
            },
            encode: Box::new(move |delivery, _| encode(delivery, framing)),
            heartbeat_chunk: encode_plain(&Record::Heartbeat, framing),
            heartbeat: config.heartbeat,
            // Records name their topic and cursor; the reader keeps the set.
            writes_token: false,
            // Every stream of one framing writes a delivery alike: a fan-out may write it.
            fanout: match (start, config.fanout, framing) {
                (Start::One(_), true, Framing::Ndjson) => Some(Fanned {
                    style: "stream-ndjson",
                    encode: |delivery| joined(delivery, Framing::Ndjson),
                }),
                (Start::One(_), true, Framing::Binary) => Some(Fanned {
                    style: "stream-binary",
                    encode: |delivery| joined(delivery, Framing::Binary),
                }),
                _ => None,
            },
        }
    }
}

/// A delivery's record as one piece.
fn joined(delivery: &pushpull_core::Delivery, framing: Framing) -> bytes::Bytes {
    match encode(delivery, framing).as_slice() {
        [one] => one.clone(),
        pieces => pieces.concat().into(),
    }
}
