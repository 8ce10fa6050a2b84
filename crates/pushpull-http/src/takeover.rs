//! Long-lived responses written by the server itself. hyper keeps an HTTP/1 connection's state
//! (an 8 KiB read buffer, an 8 KiB write buffer, its dispatcher) for as long as a response
//! lives, which for an event stream is the client's whole session and for a held poll most of
//! it: most of what such a connection costs. So on a plain HTTP/1.1 connection, while its
//! requests are `GET`s of [long-lived](crate::Route::long_lived) routes (event streams, held
//! polls), the serve loop reads each request head itself, has the [`Router`] answer it, and
//! writes the response (head, then chunks, as each is ready) with nothing but the socket and
//! the response body held in between. At the first other request (a publish, an upgrade, a
//! body, HTTP/1.0, anything unusual) hyper takes over the connection for good, from the bytes
//! already read. TLS and HTTP/2 connections are hyper's throughout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::fanout::Gate;
use crate::{Router, Shutdown};

/// The most header fields a request head taken over may have; one with more goes to hyper.
const MAX_FIELDS: usize = 64;
/// Written at once when this much is ready; a stream's chunks are gathered up to it.
const WRITE_AT: usize = 64 * 1024;
/// The most bytes a client may send while its response streams (a request pipelined behind
/// it, kept for hyper); past it the connection is closed.
const MAX_PIPELINED: usize = 16 * 1024;

/// What the next request of a connection turned out to be.
pub(crate) enum First {
    /// A `GET` of a long-lived route, nothing sent after its head: answered here.
    Takeover(Request<Empty<Bytes>>),
    /// Anything else: hyper serves the connection, starting with these bytes.
    Hyper(Vec<u8>),
    /// The client closed, or sent no whole head within the header read timeout.
    Gone,
}

/// Reads the head of the connection's next request (after the bytes `read` already, a request
/// pipelined behind the last one) and decides who answers it.
pub(crate) async fn next_request(
    stream: &TcpStream,
    read: Vec<u8>,
    router: &Router,
    timeout: Duration,
    max_head: usize,
    shutdown: &mut Shutdown,
) -> First {
    let mut buf = read;
    buf.reserve(1024);
    // A connection waiting for its next request closes at shutdown (one that already sent
    // some of it is answered, as hyper does).
    if buf.is_empty() && shutdown.is_shutting_down() {
        return First::Gone;
    }
    let read = tokio::time::timeout(timeout, async {
        loop {
            // Each head parsed once per read: whole, it is answered here or handed to hyper.
            if !buf.is_empty() {
                match read_head(&buf, router) {
                    Head::Partial if buf.len() < max_head => {}
                    Head::Takeover(request) => return Some(Some(request)),
                    // Malformed, too large, too many fields, or not one to answer here.
                    Head::Partial | Head::Hyper => return Some(None),
                }
            } else {
                tokio::select! {
                    () = shutdown.wait() => return None,
                    readable = stream.readable() => if readable.is_err() {
                        return None;
                    },
                }
            }
            if buf.len() == buf.capacity() {
                buf.reserve(buf.len());
            }
            match read_some(stream, &mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    // A client that closed, or sent no whole head in time (an idle keep-alive connection
    // included), is closed on, as hyper does.
    match read {
        Ok(Some(Some(request))) => First::Takeover(request),
        Ok(Some(None)) => First::Hyper(buf),
        Ok(None) | Err(_) => First::Gone,
    }
}

/// Reads what `stream` has into `buf`, waiting for something.
async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        let start = buf.len();
        let room = buf.capacity() - start;
        buf.resize(start + room, 0);
        let read = crate::fanout::try_read_drained(stream, &mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return done,
        }
    }
}

/// What a connection's next request head turned out to be.
#[allow(
    clippy::large_enum_variant,
    reason = "taken apart where it is made; boxed, it would cost an allocation per request"
)]
enum Head {
    /// Not whole yet.
    Partial,
    /// A complete HTTP/1.1 `GET` of a long-lived route, without a body, an upgrade or an
    /// expectation, and nothing after it: answered here.
    Takeover(Request<Empty<Bytes>>),
    /// Anything else (malformed included): for hyper.
    Hyper,
}

/// Reads the request head in `head` (all the connection has sent of its next request).
fn read_head(head: &[u8], router: &Router) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let length = match parsed.parse(head) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Hyper,
    };
    let taken = takes_over(&parsed, length == head.len(), router);
    taken.map_or(Head::Hyper, Head::Takeover)
}

/// The request `parsed`, if it is one to answer here (`alone`: nothing was sent after it).
fn takes_over(
    parsed: &httparse::Request<'_, '_>,
    alone: bool,
    router: &Router,
) -> Option<Request<Empty<Bytes>>> {
    let path = parsed.path?;
    if !alone
        || parsed.method != Some("GET")
        || parsed.version != Some(1)
        || !path.starts_with('/')
        || !router.is_long_lived(path.split('?').next().unwrap_or(path))
    {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let body_or_upgrade = (name == header::CONTENT_LENGTH && field.value != b"0")
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT;
        if body_or_upgrade {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = path.parse().ok()?;
    *request.version_mut() = http::Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// Whether the request asked for its connection to close after the response.
pub(crate) fn wants_close<B>(request: &Request<B>) -> bool {
    says_close(request.headers())
}

/// Whether `Connection` in `headers` says `close`.
fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

/// How a response's body is framed on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// No body may follow (`204`, `304`).
    None,
    /// `Content-Length`: the body as it is.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes `response` through `gate`: its head, then each chunk of its body as it is ready (what
/// is ready together goes in one write), until the body ends or the client goes away. Returns
/// `pipelined` with what the client sent meanwhile (requests pipelined behind this one) when
/// the connection may serve more requests, `None` when it is to close.
///
/// The head is made (into the buffer the future writes first) before the returned future
/// starts, and the response's parts are dropped then: the future keeps the body, the buffer
/// and the socket, all an event stream needs for its whole life.
pub(crate) fn answer<B>(
    gate: &Gate,
    response: Response<B>,
    close: bool,
    mut pipelined: Vec<u8>,
) -> impl Future<Output = Option<Vec<u8>>> + Send + '_
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    // Answered already, by a held poll's topic task: nothing is written but what it left
    // pending (its answer said `Connection: close` if the request did).
    let answered = gate.take_answered();
    let close = close || (!answered && says_close(response.headers()));
    let (parts, body) = response.into_parts();
    let mut body = Box::pin(body);
    let framing = if answered
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational()
    {
        Framing::None
    } else if parts.headers.contains_key(header::CONTENT_LENGTH)
        || body.size_hint().exact().is_some()
    {
        Framing::Length
    } else {
        Framing::Chunked
    };
    let mut out = if answered { BytesMut::new() } else { BytesMut::with_capacity(512) };
    if !answered {
        head(&mut out, &parts, framing, body.size_hint().exact());
        if close && !parts.headers.contains_key(header::CONNECTION) {
            field(&mut out, "connection", b"close");
        }
        out.put_slice(b"\r\n");
    }
    drop(parts);

    async move {
        let mut ended = framing == Framing::None;
        loop {
            // Everything ready now goes out in one write (the head with the first chunks).
            while !ended && out.len() < WRITE_AT {
                match body.frame().now_or_never() {
                    None => break,
                    Some(next) => ended = take(next, framing, &mut out).ok()?,
                }
            }
            if ended && framing == Framing::Chunked {
                out.put_slice(b"0\r\n\r\n");
            }
            // Whole chunks, and what a fan-out left pending before them.
            gate.write_all(&out).await.ok()?;
            out.clear();
            if out.capacity() > 4 * 1024 {
                out = BytesMut::new();
            }
            if ended {
                return (!close).then_some(pipelined);
            }
            // Wait for the next chunk, and notice meanwhile a client that has gone away. All
            // written, the body may meanwhile have a fan-out write for it.
            gate.set_idle(true);
            let next = tokio::select! {
                next = body.frame() => Some(next),
                gone = client_sends(gate.tcp(), &mut pipelined) => {
                    if gone {
                        return None;
                    }
                    None
                }
            };
            gate.set_idle(false);
            if let Some(next) = next {
                ended = take(next, framing, &mut out).ok()?;
            }
        }
    }
}

/// Writes into `out` the head of a response of `parts` framed by `framing` (`length`, the
/// body's length if known): its status line and fields, `Date` unless it has one, and its
/// framing's field unless it has one; not the blank line that ends it.
fn head(out: &mut BytesMut, parts: &http::response::Parts, framing: Framing, length: Option<u64>) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        field(out, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        date(|now| field(out, "date", now));
    }
    match framing {
        Framing::Length if !parts.headers.contains_key(header::CONTENT_LENGTH) => {
            // Written in place: no string made per answer.
            let length = length.unwrap_or(0);
            let _ = std::fmt::Write::write_fmt(out, format_args!("content-length: {length}\r\n"));
        }
        Framing::Chunked => field(out, "transfer-encoding", b"chunked"),
        Framing::Length | Framing::None => {}
    }
}

/// A response whose body is whole now (a page), as the bytes [`answer`] would write for it:
/// its head without the blank line that ends it (fields to add go after it), and its body.
/// `None` for a response whose body is not whole now.
pub(crate) fn fixed_head<B>(response: Response<B>) -> Option<(Bytes, Bytes)>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact()?;
    // A page's body is one frame: taken as it is, not copied.
    let data = body.collect().now_or_never()?.ok()?.to_bytes();
    if data.len() as u64 != length {
        return None;
    }
    let mut out = BytesMut::with_capacity(256);
    head(&mut out, &parts, Framing::Length, Some(length));
    Some((out.freeze(), data))
}

/// Awaits `response` (a request's answer being made: a held poll waits for a message), and
/// notices meanwhile a client that goes away: then `None`, and the answer is dropped, with
/// what it held. What the client sends meanwhile (a request pipelined behind this one) is
/// added to `pipelined`.
///
/// Once the client has sent something, a held poll's topic task that answers the request
/// wakes the connection (otherwise only the client's next request does): what was sent is
/// answered next.
pub(crate) async fn answer_of<T>(
    gate: &Gate,
    response: impl Future<Output = T>,
    pipelined: &mut Vec<u8>,
) -> Option<T> {
    let mut response = std::pin::pin!(response);
    loop {
        tokio::select! {
            answer = &mut response => return Some(answer),
            gone = client_sends(gate.tcp(), pipelined) => match gone {
                true => return None,
                false if !pipelined.is_empty() => gate.wake_when_answered(),
                false => {}
            },
        }
    }
}

/// Waits for the client to send something, and keeps it in `pipelined`; `true` when the
/// client closed (or half-closed: as hyper does by default, that ends the connection), failed,
/// or sent more than [`MAX_PIPELINED`].
async fn client_sends(stream: &TcpStream, pipelined: &mut Vec<u8>) -> bool {
    if stream.readable().await.is_err() {
        return true;
    }
    let mut bytes = [0u8; 1024];
    match crate::fanout::try_read_drained(stream, &mut bytes) {
        Ok(0) => true,
        Ok(read) if pipelined.len() + read <= MAX_PIPELINED => {
            pipelined.extend_from_slice(&bytes[..read]);
            false
        }
        Ok(_) => true,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Appends the body frame `next` to `out` as `framing` writes it; whether the body ended, or
/// `Err` when it failed (the connection then closes, the response cut short).
fn take<E: std::fmt::Display>(
    next: Option<Result<http_body::Frame<Bytes>, E>>,
    framing: Framing,
    out: &mut BytesMut,
) -> Result<bool, ()> {
    let data = match next {
        None => return Ok(true),
        Some(Err(error)) => {
            tracing::debug!(%error, "a long-lived response's body failed");
            return Err(());
        }
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => data,
            // Trailers: HTTP/1.1 chunked trailers are not written (hyper does not either
            // unless asked for).
            Err(_) => return Ok(false),
        },
    };
    if data.is_empty() {
        return Ok(false);
    }
    match framing {
        Framing::Chunked => {
            // Written in place: no string made per chunk.
            let _ = std::fmt::Write::write_fmt(out, format_args!("{:x}\r\n", data.len()));
            out.put_slice(&data);
            out.put_slice(b"\r\n");
        }
        Framing::Length => out.put_slice(&data),
        Framing::None => {}
    }
    Ok(false)
}

/// `data` as one chunk of a chunked body (a fan-out's write of a delivery).
pub(crate) fn chunk(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 12);
    let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{:x}\r\n", data.len()));
    out.put_slice(data);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Calls `with` with the `Date` of a response written now (IMF-fixdate), made once a second
/// per thread, as hyper does: a held poll's answer is one of thousands a second.
fn date(with: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(made, text)| {
        if *made != second {
            *text = httpdate::fmt_http_date(now);
            *made = second;
        }
        with(text.as_bytes());
    });
}

pub(crate) fn field(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// A connection whose first bytes were already read: they are read again first.
pub(crate) struct Rewind<T> {
    read: Option<Bytes>,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(read: Vec<u8>, inner: T) -> Self {
        let read = (!read.is_empty()).then(|| Bytes::from(read));
        Self { read, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(read) = &mut self.read {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read.split_to(n));
            if read.is_empty() {
                self.read = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
