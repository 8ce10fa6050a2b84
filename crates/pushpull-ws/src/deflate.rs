//! permessage-deflate (RFC 7692), without context takeover either way: a message is compressed
//! on its own, so the server compresses each message once and sends the same frame to every
//! subscriber, and neither end keeps a compression window per socket between messages.
//!
//! tungstenite knows no extensions and refuses a frame with RSV1 set. The compressed frames the
//! server sends are made here ([`compress`]) and handed to it whole; the compressed messages a
//! peer sends are inflated by [`Inflating`], between the socket and tungstenite, into the plain
//! frames tungstenite reads.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderMap;
use http::header::SEC_WEBSOCKET_EXTENSIONS;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::close;

/// The extension's name (RFC 7692 section 5).
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// What both ends agree on: each message compressed on its own, both ways. The server's answer
/// to an offer it accepts, and what the client offers.
pub(crate) const NO_CONTEXT_TAKEOVER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Whether `headers` offer permessage-deflate in a form this end accepts: an offer whose
/// parameters are all RFC 7692's, each at most once, with valid values, that lets the sender
/// use a 32 KiB window (no `server_max_window_bits` below 15). An offer this end cannot accept
/// is declined, as the RFC asks (section 5), not refused.
pub(crate) fn offered(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(acceptable)
}

/// Whether one offer (`permessage-deflate; param; param=value`) is one this end accepts.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION)) {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false;
        }
        let bits = value.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=15).contains(b));
        let valid = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // Compression here always uses the full window.
            "server_max_window_bits" => bits == Some(15),
            // Inflating takes any window.
            "client_max_window_bits" => value.is_none() || bits.is_some(),
            _ => false,
        };
        if !valid {
            return false;
        }
        seen.push(name);
    }
    true
}

/// Whether a handshake response (`head`, up to its blank line) accepted permessage-deflate.
fn accepted(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case(SEC_WEBSOCKET_EXTENSIONS.as_str())
                && value.split(',').any(|extension| {
                    extension
                        .split(';')
                        .next()
                        .is_some_and(|name| name.trim().eq_ignore_ascii_case(EXTENSION))
                })
        })
    })
}

/// How hard messages are compressed: zlib's default, a good ratio for what small messages
/// cost to compress (each is compressed once, whatever its subscribers).
const LEVEL: u32 = 6;

thread_local! {
    /// A compressor per thread, reset between messages: making one allocates its tables.
    static DEFLATER: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// `message` as one compressed frame (RSV1 set), when it is a text or binary message of at
/// least `min_bytes` bytes that compression makes smaller; otherwise `message` itself.
pub(crate) fn compress(message: WsMessage, min_bytes: usize) -> WsMessage {
    let (data, opcode) = match &message {
        WsMessage::Text(text) if text.len() >= min_bytes => (text.as_bytes(), Data::Text),
        WsMessage::Binary(bytes) if bytes.len() >= min_bytes => (&bytes[..], Data::Binary),
        _ => return message,
    };
    match deflate(data) {
        Some(compressed) if compressed.len() < data.len() => {
            let mut frame = Frame::message(compressed, OpCode::Data(opcode), true);
            frame.header_mut().rsv1 = true;
            WsMessage::Frame(frame)
        }
        _ => message,
    }
}

/// `data` deflated on its own, as RFC 7692 section 7.2.1 sends it: a raw DEFLATE stream ended
/// by a sync flush, whose last four bytes (`00 00 ff ff`) are left off.
fn deflate(data: &[u8]) -> Option<Vec<u8>> {
    DEFLATER.with_borrow_mut(|deflater| {
        deflater.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = deflater.total_in() as usize;
            deflater.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync).ok()?;
            // Done once every byte is in and the flush left room to spare.
            if deflater.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        Some(out)
    })
}

/// Why inflating a message failed.
#[derive(Debug)]
enum Inflation {
    /// It inflates past the limit.
    TooBig,
    /// It is not DEFLATE data.
    Corrupt(String),
}

/// `data`, a compressed message's payload, inflated: at most `limit` bytes.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, Inflation> {
    let mut inflater = Decompress::new(false);
    let mut input = Vec::with_capacity(data.len() + 4);
    input.extend_from_slice(data);
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity((data.len() * 4).clamp(64, limit.saturating_add(1)));
    loop {
        let (read, wrote) = (inflater.total_in(), inflater.total_out());
        let consumed = read as usize;
        let status = inflater
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|error| Inflation::Corrupt(error.to_string()))?;
        if out.len() > limit {
            return Err(Inflation::TooBig);
        }
        // A sender may end a message with a final block (RFC 7692 section 7.2.3.3): what
        // follows it (the tail added above) is not read.
        if status == Status::StreamEnd
            || (inflater.total_in() as usize == input.len() && out.len() < out.capacity())
        {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity().min(limit.saturating_add(1) - out.len()).max(64));
        } else if (inflater.total_in(), inflater.total_out()) == (read, wrote) {
            return Err(Inflation::Corrupt("the data ends mid-block".into()));
        }
    }
}

/// The socket between the network and tungstenite: reads pass straight through, unless
/// permessage-deflate was agreed, when the peer's compressed messages are inflated into plain
/// frames on the way. Writes always pass straight through.
pub(crate) struct Inflating<S> {
    inner: S,
    reader: Option<Box<Reader>>,
}

impl<S> Inflating<S> {
    /// A socket whose reads all pass straight through.
    pub(crate) fn plain(inner: S) -> Self {
        Self { inner, reader: None }
    }

    /// A server's socket: `limit` is the largest message the peer may send, inflated, or
    /// `None` when permessage-deflate was not agreed.
    pub(crate) fn server(inner: S, limit: Option<usize>) -> Self {
        let reader = limit.map(|limit| Box::new(Reader::new(Stage::Frames, true, limit)));
        Self { inner, reader }
    }

    /// A client's socket before its handshake: it reads the server's answer itself and inflates
    /// what follows if that accepts permessage-deflate (so tungstenite never reads past the
    /// answer before the socket knows). `limit` bounds a message, inflated.
    pub(crate) fn client(inner: S, limit: usize) -> Self {
        Self { inner, reader: Some(Box::new(Reader::new(Stage::Head, false, limit))) }
    }

    /// The close code and reason for a compressed message of the peer's that could not be
    /// inflated.
    pub(crate) fn failure(&self) -> Option<(u16, String)> {
        self.reader.as_ref().and_then(|reader| reader.failure.clone())
    }
}

/// The most a client reads of a handshake answer looking for its end: past it, the rest
/// passes to tungstenite, which refuses what is not an answer.
const MAX_HEAD: usize = 64 * 1024;

/// Where a [`Reader`] is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// A client's, before the end of the server's handshake answer.
    Head,
    /// Frames: compressed messages are inflated.
    Frames,
    /// Everything passes through: the server did not agree to compress.
    Plain,
}

/// What an [`Inflating`] socket keeps while permessage-deflate is in use.
struct Reader {
    stage: Stage,
    /// Whether frames to this end are masked (it is a server), as tungstenite expects them.
    masked: bool,
    /// The largest message, inflated.
    limit: usize,
    /// Bytes read from the socket not yet worked through.
    raw: BytesMut,
    /// Bytes for tungstenite.
    out: BytesMut,
    /// Payload bytes of a plain frame still to pass through.
    passing: u64,
    /// A compressed message being gathered: its opcode and its payload so far, unmasked.
    gathering: Option<(OpCode, Vec<u8>)>,
    /// The close code and reason for a message that could not be inflated.
    failure: Option<(u16, String)>,
    ended: bool,
}

impl Reader {
    fn new(stage: Stage, masked: bool, limit: usize) -> Self {
        Self {
            stage,
            masked,
            limit,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            passing: 0,
            gathering: None,
            failure: None,
            ended: false,
        }
    }

    fn fail(&mut self, code: u16, reason: impl Into<String>) {
        self.failure = Some((code, reason.into()));
        self.raw = BytesMut::new();
    }

    /// Works through what has been read; returns whether anything came of it (bytes for
    /// tungstenite or a failure), or more must be read first.
    fn work(&mut self) -> bool {
        let before = (self.out.len(), self.failure.is_some());
        while self.failure.is_none() && self.step() {}
        (self.out.len(), self.failure.is_some()) != before
    }

    /// Takes one step through `raw`; false when it needs more bytes.
    fn step(&mut self) -> bool {
        match self.stage {
            Stage::Head => {
                let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if self.raw.len() > MAX_HEAD {
                        self.stage = Stage::Plain;
                        return true;
                    }
                    return false;
                };
                let head = self.raw.split_to(end + 4);
                self.stage = if accepted(&head) { Stage::Frames } else { Stage::Plain };
                self.out.extend_from_slice(&head);
                return true;
            }
            Stage::Plain if self.raw.is_empty() => return false,
            Stage::Plain => {
                let rest = self.raw.split();
                self.out.extend_from_slice(&rest);
                return true;
            }
            Stage::Frames => {}
        }
        if self.passing > 0 {
            if self.raw.is_empty() {
                return false;
            }
            let n = self.passing.min(self.raw.len() as u64) as usize;
            let bytes = self.raw.split_to(n);
            self.out.extend_from_slice(&bytes);
            self.passing -= n as u64;
            return true;
        }
        let mut cursor = io::Cursor::new(&self.raw[..]);
        let (head, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return false,
            // A header tungstenite cannot read either: it says so itself.
            Err(_) => {
                self.stage = Stage::Plain;
                return true;
            }
        };
        let size = cursor.position() as usize;
        let data = matches!(head.opcode, OpCode::Data(Data::Text | Data::Binary));
        let continuation = head.opcode == OpCode::Data(Data::Continue);
        let compressed = (data && head.rsv1) || (continuation && self.gathering.is_some());
        if !compressed {
            if data && self.gathering.is_some() {
                self.fail(
                    close::PROTOCOL_ERROR,
                    "a new message began before the compressed one had ended",
                );
                return false;
            }
            // A plain frame (or one tungstenite will refuse itself): passed on as it came.
            let header = self.raw.split_to(size);
            self.out.extend_from_slice(&header);
            self.passing = length;
            return true;
        }
        if continuation && head.rsv1 {
            self.fail(close::PROTOCOL_ERROR, "RSV1 set on a continuation frame");
            return false;
        }
        if head.mask.is_some() != self.masked {
            let why = if self.masked {
                "an unmasked frame from a client"
            } else {
                "a masked frame from a server"
            };
            self.fail(close::PROTOCOL_ERROR, why);
            return false;
        }
        let gathered = self.gathering.as_ref().map_or(0, |(_, payload)| payload.len() as u64);
        if gathered.saturating_add(length) > self.limit as u64 {
            self.fail(
                close::TOO_BIG,
                format!("a compressed message of more than {} bytes", self.limit),
            );
            return false;
        }
        let length = length as usize;
        if self.raw.len() < size + length {
            self.raw.reserve(size + length - self.raw.len());
            return false;
        }
        self.raw.advance(size);
        let mut payload = self.raw.split_to(length);
        if let Some(key) = head.mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        let (_, gathered) = self.gathering.get_or_insert_with(|| (head.opcode, Vec::new()));
        gathered.extend_from_slice(&payload);
        if !head.is_final {
            return true;
        }
        let (opcode, gathered) = self.gathering.take().expect("gathering");
        match inflate(&gathered, self.limit) {
            Ok(message) => {
                self.emit(opcode, &message);
                true
            }
            Err(Inflation::TooBig) => {
                self.fail(
                    close::TOO_BIG,
                    format!("a compressed message inflates past the limit of {} bytes", self.limit),
                );
                false
            }
            Err(Inflation::Corrupt(why)) => {
                self.fail(
                    close::INVALID_UTF8,
                    format!("a compressed message does not inflate: {why}"),
                );
                false
            }
        }
    }

    /// Writes one plain, final frame of `opcode` for tungstenite: masked with a zero key where
    /// it expects masked frames, which leaves the payload as it is.
    fn emit(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.masked.then_some([0; 4]);
        let header = FrameHeader { is_final: true, opcode, mask, ..FrameHeader::default() };
        self.out.reserve(header.len(payload.len() as u64) + payload.len());
        let mut writer = (&mut self.out).writer();
        header.format(payload.len() as u64, &mut writer).expect("a header writes to memory");
        self.out.put_slice(payload);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Inflating { inner, reader } = self.get_mut();
        let Some(reader) = reader.as_deref_mut() else {
            return Pin::new(inner).poll_read(cx, buf);
        };
        loop {
            if !reader.out.is_empty() {
                let n = reader.out.len().min(buf.remaining());
                buf.put_slice(&reader.out[..n]);
                reader.out.advance(n);
                if reader.out.is_empty() && reader.raw.is_empty() {
                    // An idle socket keeps no buffers.
                    (reader.out, reader.raw) = (BytesMut::new(), BytesMut::new());
                }
                return Poll::Ready(Ok(()));
            }
            if let Some((_, reason)) = &reader.failure {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    reason.clone(),
                )));
            }
            if reader.ended {
                return Poll::Ready(Ok(()));
            }
            if reader.work() {
                continue;
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut *inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The peer is gone: what is left goes to tungstenite as it came, which sees a
                // frame cut short.
                reader.ended = true;
                let rest = reader.raw.split();
                reader.out.extend_from_slice(&rest);
                continue;
            }
            reader.raw.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;

    /// A masked client frame, as tungstenite's own encoder writes it.
    fn client_frame(fin: bool, rsv1: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut frame = Frame::message(payload.to_vec(), OpCode::Data(Data::Binary), fin);
        let header = frame.header_mut();
        (header.rsv1, header.opcode, header.mask) = (rsv1, opcode, Some([0xa1, 0x02, 0x7f, 0x30]));
        let mut bytes = Vec::new();
        frame.format(&mut bytes).expect("a frame formats");
        bytes
    }

    /// One message as a client may send it: compressed or not, in `pieces` fragments (at
    /// least one), a ping after the first.
    fn frames_of(text: &str, compressed: bool, pieces: usize) -> Vec<u8> {
        let data = if compressed { deflate(text.as_bytes()).unwrap() } else { text.into() };
        let size = data.len().div_ceil(pieces.max(1)).max(1);
        let chunks: Vec<&[u8]> =
            if data.is_empty() { vec![&[]] } else { data.chunks(size).collect() };
        let mut bytes = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let (first, last) = (i == 0, i + 1 == chunks.len());
            let opcode = OpCode::Data(if first { Data::Text } else { Data::Continue });
            bytes.extend(client_frame(last, compressed && first, opcode, chunk));
            if first {
                let ping = OpCode::Control(Control::Ping);
                bytes.extend(client_frame(true, false, ping, b"p"));
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the mix of compressed and plain messages, their fragments, and how the
        /// bytes are cut into reads, tungstenite reads every message as it was sent.
        #[test]
        fn messages_arrive_whole_however_they_are_cut(
            messages in prop::collection::vec(
                ("[ -~]{0,40}", 1usize..60, any::<bool>(), 1usize..4),
                1..6,
            ),
            read_size in 1usize..40,
        ) {
            let texts: Vec<String> =
                messages.iter().map(|(piece, times, _, _)| piece.repeat(*times)).collect();
            let mut bytes = Vec::new();
            for ((_, _, compressed, pieces), text) in messages.iter().zip(&texts) {
                bytes.extend(frames_of(text, *compressed, *pieces));
            }
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let read: Vec<String> = runtime.block_on(async move {
                // A pipe that takes at most `read_size` bytes at a time cuts frames anywhere.
                let (client, server) = tokio::io::duplex(read_size);
                let (mut answers, mut client) = tokio::io::split(client);
                let writer = tokio::spawn(async move {
                    let _ = client.write_all(&bytes).await;
                    client
                });
                // The pongs tungstenite sends back are read and dropped.
                let drain = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut answers, &mut tokio::io::sink()).await;
                });
                let socket = Inflating::server(server, Some(1 << 20));
                let mut socket = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
                let mut read = Vec::new();
                while read.len() < texts.len() {
                    match socket.next().await {
                        Some(Ok(WsMessage::Text(text))) => read.push(text.to_string()),
                        Some(Ok(_)) => {}
                        other => panic!("{other:?} after {read:?}"),
                    }
                }
                writer.abort();
                drain.abort();
                assert_eq!(read, texts);
                read
            });
            prop_assert_eq!(read.len(), messages.len());
        }
    }

    fn offer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, value.parse().unwrap());
        headers
    }

    #[test]
    fn accepts_the_offers_browsers_and_libraries_make() {
        assert!(offered(&offer("permessage-deflate; client_max_window_bits")));
        assert!(offered(&offer("permessage-deflate")));
        assert!(offered(&offer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )));
        assert!(offered(&offer("permessage-deflate; client_max_window_bits=\"12\"")));
        // The second offer is acceptable when the first is not.
        assert!(offered(&offer(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        )));
    }

    #[test]
    fn declines_offers_it_cannot_honour_or_read() {
        assert!(!offered(&HeaderMap::new()));
        assert!(!offered(&offer("x-webkit-deflate-frame")));
        assert!(!offered(&offer("permessage-deflate; server_max_window_bits=10")));
        assert!(!offered(&offer("permessage-deflate; client_max_window_bits=16")));
        assert!(!offered(&offer("permessage-deflate; mystery")));
        assert!(!offered(&offer("permessage-deflate; server_no_context_takeover=1")));
        assert!(!offered(&offer(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        )));
    }

    #[test]
    fn a_compressed_message_inflates_to_what_was_compressed() {
        let text = "{\"op\":\"message\",\"data\":\"".to_owned() + &"hello ".repeat(200) + "\"}";
        let compressed = deflate(text.as_bytes()).expect("deflate");
        assert!(compressed.len() < text.len() / 4, "{} bytes", compressed.len());
        assert!(!compressed.ends_with(&[0, 0, 0xff, 0xff]));
        assert_eq!(inflate(&compressed, 10_000).unwrap(), text.as_bytes());
        assert!(matches!(inflate(&compressed, 100), Err(Inflation::TooBig)));
        assert!(matches!(inflate(&[0xff, 0xff, 0xff], 100), Err(Inflation::Corrupt(_))));
        // Ended by a final block instead of a sync flush, as a sender may.
        let mut finished = Vec::with_capacity(text.len());
        let mut deflater = Compress::new(Compression::default(), false);
        deflater.compress_vec(text.as_bytes(), &mut finished, FlushCompress::Finish).unwrap();
        assert_eq!(inflate(&finished, 10_000).unwrap(), text.as_bytes());
    }

    #[test]
    fn small_or_incompressible_messages_stay_plain() {
        let small = WsMessage::Text("short".into());
        assert_eq!(compress(small.clone(), 256), small);
        let big = WsMessage::Text("abc".repeat(200).into());
        let WsMessage::Frame(frame) = compress(big, 256) else { panic!("not compressed") };
        assert!(frame.header().rsv1 && frame.header().is_final);
        // xorshift64: bytes DEFLATE cannot shrink.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let random: Vec<u8> = (0..600)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let noise = WsMessage::Binary(random.into());
        assert_eq!(compress(noise.clone(), 256), noise);
    }
}
