//! Serving a [`Router`](crate::Router) (or any hyper service) on a TCP listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::tls::TlsAcceptor;

/// How connections are served.
#[derive(Clone)]
pub struct ServeConfig {
    /// How long a client may take to send a request's head, counted from the moment the
    /// server waits for one (so it also closes idle keep-alive connections). A client that
    /// connects and sends nothing is disconnected after this long; so is one that does not
    /// finish its TLS handshake.
    pub header_read_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight before closing them.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this acceptor (see [`TlsFiles`](crate::TlsFiles)); `None` serves
    /// plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// The most connections open at once. At the limit the server stops accepting until one
    /// closes (new clients wait in the listen backlog), so it never runs out of descriptors.
    pub max_connections: usize,
    /// The most connections open at once from one client address (an IPv4 address, or an
    /// IPv6 /64). More are answered `429 Too Many Requests` and closed.
    pub max_connections_per_address: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            max_connections: 20_000,
            max_connections_per_address: 1_000,
        }
    }
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_address", &self.max_connections_per_address)
            .finish()
    }
}

/// Tells long-lived handlers (held polls, event streams) that the server is shutting down, so
/// they end their responses instead of holding the graceful shutdown up. The serve loop puts
/// one in every request's extensions; read it with [`Shutdown::of`].
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`]: what a host application holds to end pushpull's long-lived responses
/// when it shuts down itself.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// Begins the shutdown: every [`Shutdown`] of this trigger fires.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A signal and the trigger that fires it.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (trigger, signal) = watch::channel(false);
        (ShutdownTrigger(trigger), Shutdown(signal))
    }

    /// The signal of the server that received `request`, or one that never fires.
    pub fn of<B>(request: &Request<B>) -> Shutdown {
        request.extensions().get::<Shutdown>().cloned().unwrap_or_else(Shutdown::never)
    }

    /// A signal that never fires.
    pub fn never() -> Shutdown {
        // One sender for the whole process that never sends and never drops, so `wait` pends.
        static NEVER: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
        Shutdown(NEVER.get_or_init(|| watch::Sender::new(false)).subscribe())
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until shutdown begins.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }
}

/// Counts its connection as open while any clone of it lives: the serve loop holds one while
/// hyper serves the connection and puts one in each request's extensions, so a handler that
/// takes the connection over (a WebSocket upgrade) keeps it counted for as long as it uses it.
#[derive(Debug, Clone)]
pub struct ConnectionHold(#[allow(dead_code)] Arc<OpenGuard>);

impl ConnectionHold {
    /// The hold of the connection that carried `request`, if a pushpull server served it.
    pub fn of<B>(request: &Request<B>) -> Option<ConnectionHold> {
        request.extensions().get::<ConnectionHold>().cloned()
    }
}

/// Puts the server's [`Shutdown`] (and the connection's [`ConnectionHold`]) into each
/// request's extensions.
#[derive(Clone)]
struct WithShutdown<S> {
    inner: S,
    signal: Shutdown,
    stats: Arc<ServerStats>,
    hold: Option<ConnectionHold>,
    peer: Option<PeerAddr>,
}

/// The client address of the connection that carried a request, which the serve loop puts in
/// each request's extensions (for access logs and per-client decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer of `request`, if a pushpull server served it.
    pub fn of<B>(request: &Request<B>) -> Option<SocketAddr> {
        request.extensions().get::<PeerAddr>().map(|peer| peer.0)
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for WithShutdown<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = S::Future;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        request.extensions_mut().insert(self.signal.clone());
        if let Some(hold) = &self.hold {
            request.extensions_mut().insert(hold.clone());
        }
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        self.inner.call(request)
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    open: AtomicUsize,
    accepted: AtomicUsize,
    requests: AtomicUsize,
    refused: AtomicUsize,
    /// Woken when a connection closes, for an accept loop waiting at its limit.
    closed: Notify,
}

impl ServerStats {
    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Requests received since the start (HTTP/1.1 and HTTP/2 alike).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Connections refused since the start for going over the per-address limit.
    pub fn refused_connections(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A server running in the background. Dropping it shuts it down, abruptly; prefer
/// [`shutdown`](RunningServer::shutdown).
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    stats: Arc<ServerStats>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Stops accepting, lets requests in flight finish (up to the grace period), then returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Serves `service` on `listener` in a background task.
pub fn spawn<S, B>(
    listener: TcpListener,
    service: S,
    config: ServeConfig,
) -> io::Result<RunningServer>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    spawn_with_stats(listener, service, config, Arc::default())
}

/// [`spawn`], counting into `stats` (which a handler may also hold, to report them).
pub fn spawn_with_stats<S, B>(
    listener: TcpListener,
    service: S,
    config: ServeConfig,
    stats: Arc<ServerStats>,
) -> io::Result<RunningServer>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_until(listener, service, config, stats.clone(), async {
        let _ = stopped.await;
    }));
    Ok(RunningServer { addr, stop: Some(stop), task: Some(task), stats })
}

/// Serves `service` on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn serve_until<S, B>(
    listener: TcpListener,
    service: S,
    config: ServeConfig,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let (shutting_down, signal) = watch::channel(false);
    let service = WithShutdown {
        inner: service,
        signal: Shutdown(signal),
        stats: stats.clone(),
        hold: None,
        peer: None,
    };
    let addresses = Arc::new(AddressCounts::default());
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // At the limit, accept nothing until a connection closes: the backlog holds the rest.
        while stats.open_connections() >= config.max_connections.max(1) {
            let closed = stats.closed.notified();
            if stats.open_connections() < config.max_connections.max(1) {
                break;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = closed => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let watcher = graceful.watcher();
        let mut service = service.clone();
        let config = config.clone();
        let hold = ConnectionHold(Arc::new(OpenGuard::new(stats.clone())));
        let from = addresses.enter(peer.ip());
        let over_limit = from.count() > config.max_connections_per_address.max(1);
        let stats = stats.clone();
        let span = tracing::debug_span!("connection", %peer);
        connections.spawn(tracing::Instrument::instrument(
            async move {
                service.hold = Some(hold.clone());
                service.peer = Some(PeerAddr(peer));
                let _open = (hold, from);
                let timeout = config.header_read_timeout;
                if config.tls.is_none() && !request_begins(&stream, timeout).await {
                    return;
                }
                let io: Box<dyn Io> = match &config.tls {
                    None => Box::new(stream),
                    Some(acceptor) => {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => Box::new(FirstByteDeadline::new(tls, timeout)),
                            Ok(Err(err)) => {
                                tracing::debug!(%err, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if over_limit {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "refusing a connection over the per-address limit");
                    refuse(io, config.max_connections_per_address).await;
                    return;
                }
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(timeout);
                builder.http2().timer(TokioTimer::new());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                if let Err(err) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(err = %err, "connection ended with an error");
                }
            },
            span,
        ));
    }
    drop(listener);
    let _ = shutting_down.send(true);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::info!("grace period over; closing the remaining connections");
        }
    }
    connections.shutdown().await;
}

/// What a connection is served over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Answers every request of a connection over the per-address limit with 429, within one
/// second, and closes it.
async fn refuse(io: Box<dyn Io>, limit: usize) {
    let body = format!(
        "{{\"error\":{{\"kind\":\"rate_limited\",\"message\":\"this address has \
         {limit} connections open, the most allowed; close some and retry\"}}}}"
    );
    let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
        let body = body.clone();
        async move {
            let response = Response::builder()
                .status(http::StatusCode::TOO_MANY_REQUESTS)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::RETRY_AFTER, "1")
                .header(http::header::CONNECTION, "close")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .expect("a valid response");
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
}

/// Open connections per client address (IPv4, or the /64 of an IPv6 address).
#[derive(Default)]
struct AddressCounts(Mutex<HashMap<IpAddr, usize>>);

impl AddressCounts {
    fn enter(self: &Arc<Self>, ip: IpAddr) -> AddressGuard {
        let key = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(prefix.into())
                }
            },
            v4 => v4,
        };
        let mut counts = self.0.lock().expect("address counts lock");
        let count = counts.entry(key).or_default();
        *count += 1;
        AddressGuard { counts: self.clone(), key, count: *count }
    }
}

/// One connection counted against its address, until dropped.
struct AddressGuard {
    counts: Arc<AddressCounts>,
    key: IpAddr,
    count: usize,
}

impl AddressGuard {
    /// The address's open connections when this one was accepted, this one included.
    fn count(&self) -> usize {
        self.count
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("address counts lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Fails reads with `TimedOut` if no byte arrived before the deadline: what bounds a TLS client
/// that handshakes and then sends nothing (HTTP/2 has no header-read timer of its own).
struct FirstByteDeadline<T> {
    inner: T,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstByteDeadline<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep(timeout))) }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.deadline = None,
            Poll::Pending => {
                if let Some(deadline) = self.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request arrived in time",
                        )));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

/// One open connection in the server's count, until dropped.
#[derive(Debug)]
struct OpenGuard(Arc<ServerStats>);

impl OpenGuard {
    fn new(stats: Arc<ServerStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.closed.notify_one();
    }
}

/// Waits, up to `timeout`, until the client has sent enough to tell HTTP/1 from HTTP/2;
/// false if it sent nothing (or closed) in time.
///
/// The bytes are only peeked, so hyper reads them again. Without this, a client that connects
/// and sends nothing would hold its connection forever, as protocol detection has no timer.
async fn request_begins(stream: &TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => n,
        };
        if buf[..peeked] != H2_PREFACE[..peeked] || peeked == H2_PREFACE.len() {
            return true;
        }
        // A partial HTTP/2 preface: peeking again at once would return the same bytes.
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5)))
            .await
            .is_err()
        {
            return false;
        }
    }
}
