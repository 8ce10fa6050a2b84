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
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::Router;
use crate::fanout::{Gate, SharedTcp, SocketOf};
use crate::takeover::{self, First};
use crate::tls::TlsAcceptor;

/// How connections are served.
#[derive(Clone)]
#[non_exhaustive]
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
    /// IPv6 /64). More are answered `429 Too Many Requests` and closed within
    /// [`REFUSAL_DEADLINE`], whether they send a request or nothing. Every HTTP/2 stream counts
    /// as one more connection of its address (and of `max_connections`), and an upgraded
    /// WebSocket stays counted until it closes.
    pub max_connections_per_address: usize,
    /// The largest request head (request line and headers) buffered, in bytes: a larger one is
    /// answered `431`. It bounds what a client that sends its head slowly makes the server
    /// hold until `header_read_timeout`. At least 8 KiB (HTTP/1's floor).
    pub max_header_bytes: usize,
}

/// How long a connection over its address's limit is kept: long enough to read a request and
/// answer it `429`, never longer, whether the client sends anything or not.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            max_connections: 20_000,
            max_connections_per_address: 1_000,
            max_header_bytes: 16 * 1024,
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
            .field("max_header_bytes", &self.max_header_bytes)
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
        Self::in_request(request).cloned().unwrap_or_else(Shutdown::never)
    }

    /// The signal in `request`'s extensions: its own, or the serving connection's.
    pub(crate) fn in_request<B>(request: &Request<B>) -> Option<&Shutdown> {
        let extensions = request.extensions();
        extensions.get::<Shutdown>().or_else(|| Some(&extensions.get::<Arc<Served>>()?.signal))
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

/// Counts its connection as open while any clone of it lives, in the server's total and in its
/// client address's count: the serve loop holds one while hyper serves the connection and puts
/// one in each request's extensions, so a handler that takes the connection over (a WebSocket
/// upgrade) keeps it counted against both limits for as long as it uses it.
#[derive(Debug, Clone)]
pub struct ConnectionHold(#[allow(dead_code)] Arc<Held>);

/// What a [`ConnectionHold`] keeps counted.
#[derive(Debug)]
struct Held {
    _open: OpenGuard,
    _address: AddressGuard,
}

impl ConnectionHold {
    /// The hold of the connection that carried `request`, if a pushpull server served it.
    pub fn of<B>(request: &Request<B>) -> Option<ConnectionHold> {
        let extensions = request.extensions();
        extensions
            .get::<ConnectionHold>()
            .or_else(|| extensions.get::<Arc<Served>>()?.hold.as_ref())
            .cloned()
    }
}

/// Puts the server's [`Shutdown`] (and the connection's [`ConnectionHold`] and peer) into each
/// request's extensions, and counts each HTTP/2 stream against the limits.
#[derive(Clone)]
struct WithShutdown<S> {
    inner: S,
    stats: Arc<ServerStats>,
    streams: Option<StreamLimits>,
    served: Arc<Served>,
}

/// What each request of a connection carries in its extensions, as one extension shared by
/// all its requests (one allocation a request, not one per item): read by [`Shutdown::of`],
/// [`ConnectionHold::of`], [`PeerAddr::of`] and [`Gate::of`](crate::fanout::Gate::of).
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) signal: Shutdown,
    hold: Option<ConnectionHold>,
    peer: Option<PeerAddr>,
    /// A plain connection's socket, for a transport that writes to it beside hyper (see
    /// [`fanout`](crate::fanout)).
    pub(crate) socket: Option<crate::fanout::SocketOf>,
}

impl<S> WithShutdown<S> {
    /// What the connection's requests carry, to change before its first request.
    fn served(&mut self) -> &mut Served {
        Arc::make_mut(&mut self.served)
    }
}

/// What an HTTP/2 stream is counted against: its address's count and the server's total.
#[derive(Clone)]
struct StreamLimits {
    addresses: Arc<AddressCounts>,
    key: IpAddr,
    per_address: usize,
    total: usize,
}

/// The client address of the connection that carried a request, which the serve loop puts in
/// each request's extensions (for access logs and per-client decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer of `request`, if a pushpull server served it.
    pub fn of<B>(request: &Request<B>) -> Option<SocketAddr> {
        let extensions = request.extensions();
        extensions
            .get::<PeerAddr>()
            .or_else(|| extensions.get::<Arc<Served>>()?.peer.as_ref())
            .map(|peer| peer.0)
    }
}

impl<S, B, R> hyper::service::Service<Request<R>> for WithShutdown<S>
where
    S: hyper::service::Service<Request<R>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<CountedBody<B>>;
    type Error = Infallible;
    type Future = Counted<S::Future>;

    fn call(&self, mut request: Request<R>) -> Self::Future {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let stream = match (&self.streams, request.version()) {
            (Some(limits), http::Version::HTTP_2) => match limits.admit(&self.stats) {
                Ok(guard) => Some(guard),
                Err(Refusal::Address) => {
                    return Counted::Refused { response: Some(refusal(limits.per_address)) };
                }
                Err(Refusal::Total) => {
                    return Counted::Refused { response: Some(busy(limits.total)) };
                }
            },
            _ => None,
        };
        request.extensions_mut().insert(self.served.clone());
        Counted::Served { future: self.inner.call(request), stream }
    }
}

impl StreamLimits {
    /// Counts one more HTTP/2 stream, or answers why it may not open.
    fn admit(&self, stats: &Arc<ServerStats>) -> Result<StreamGuard, Refusal> {
        let address = self.addresses.enter(self.key);
        if address.count() > self.per_address {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Address);
        }
        let guard = StreamGuard::new(stats.clone(), address);
        if stats.in_use() > self.total {
            return Err(Refusal::Total);
        }
        Ok(guard)
    }
}

/// Why a stream may not open.
enum Refusal {
    /// Its address is at its limit.
    Address,
    /// The server is at `max_connections`.
    Total,
}

/// One HTTP/2 stream counted in the server's total and its address's count, until dropped
/// with the stream's response body.
struct StreamGuard {
    stats: Arc<ServerStats>,
    _address: AddressGuard,
}

impl StreamGuard {
    fn new(stats: Arc<ServerStats>, address: AddressGuard) -> Self {
        stats.streams.fetch_add(1, Ordering::Relaxed);
        Self { stats, _address: address }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
        self.stats.closed.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// The response future of a counted request: the service's, or a refusal.
    #[project = CountedProj]
    enum Counted<F> {
        Served { #[pin] future: F, stream: Option<StreamGuard> },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B> Future for Counted<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<CountedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CountedProj::Served { future, stream } => {
                let Ok(response) = std::task::ready!(future.poll(cx));
                let guard = stream.take();
                Poll::Ready(Ok(response.map(|body| CountedBody::Served { body, _guard: guard })))
            }
            CountedProj::Refused { response } => {
                let response = response.take().expect("a refused stream is answered once");
                Poll::Ready(Ok(response.map(|body| CountedBody::Refused { body })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its HTTP/2 stream counted until it ends, or a refusal's.
    #[project = CountedBodyProj]
    enum CountedBody<B> {
        Served { #[pin] body: B, _guard: Option<StreamGuard> },
        Refused { body: Full<Bytes> },
    }
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.project() {
            CountedBodyProj::Served { body, .. } => body.poll_frame(cx),
            CountedBodyProj::Refused { body } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CountedBody::Served { body, .. } => body.is_end_stream(),
            CountedBody::Refused { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            CountedBody::Served { body, .. } => body.size_hint(),
            CountedBody::Refused { body } => body.size_hint(),
        }
    }
}

/// `429` for a connection or stream over its address's limit.
fn refusal(limit: usize) -> Response<Full<Bytes>> {
    let body = format!(
        "{{\"error\":{{\"kind\":\"rate_limited\",\"message\":\"this address has \
         {limit} connections and HTTP/2 streams open, the most allowed; close some and retry\"}}}}"
    );
    error_response(http::StatusCode::TOO_MANY_REQUESTS, body)
}

/// `503` for a stream beyond the server's total.
fn busy(limit: usize) -> Response<Full<Bytes>> {
    let body = format!(
        "{{\"error\":{{\"kind\":\"unavailable\",\"message\":\"the server has {limit} \
         connections and HTTP/2 streams open, the most it serves; retry later\"}}}}"
    );
    error_response(http::StatusCode::SERVICE_UNAVAILABLE, body)
}

fn error_response(status: http::StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::RETRY_AFTER, "1")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    open: AtomicUsize,
    streams: AtomicUsize,
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

    /// HTTP/2 streams open now (each counts against the limits as a connection does).
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// What counts against `max_connections`: open connections and HTTP/2 streams.
    fn in_use(&self) -> usize {
        self.open_connections() + self.open_streams()
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Requests received since the start (HTTP/1.1 and HTTP/2 alike).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Connections and HTTP/2 streams refused since the start for going over the per-address
    /// limit.
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
    /// Listeners transports own, run beside the HTTP one.
    beside: Vec<Beside>,
}

/// A transport's own listener, running beside the server's.
#[derive(Debug)]
struct Beside {
    name: &'static str,
    addr: SocketAddr,
    stop: ShutdownTrigger,
    task: JoinHandle<()>,
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

    /// Runs `listener`, which the transport `name` owns, beside the server until it shuts
    /// down.
    pub fn run_beside(&mut self, name: &'static str, listener: Box<dyn crate::OwnListener>) {
        let addr = listener.local_addr();
        let (stop, shutdown) = Shutdown::new();
        let task = tokio::spawn(listener.run(shutdown));
        self.beside.push(Beside { name, addr, stop, task });
    }

    /// The address of the listener the transport `name` owns, if it runs one.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.beside.iter().find(|b| b.name == name).map(|b| b.addr)
    }

    /// Stops accepting, lets requests in flight finish (up to the grace period), then returns;
    /// transports' own listeners stop too.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for beside in &self.beside {
            beside.stop.shutdown();
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        for beside in std::mem::take(&mut self.beside) {
            let _ = beside.task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        for beside in &self.beside {
            beside.task.abort();
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
    Ok(RunningServer { addr, stop: Some(stop), task: Some(task), stats, beside: Vec::new() })
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
        stats: stats.clone(),
        streams: None,
        served: Arc::new(Served { signal: Shutdown(signal), hold: None, peer: None, socket: None }),
    };
    // A Router served as it is answers the requests of a plain HTTP/1.1 connection for its
    // long-lived routes itself (see `takeover`); any other service is served by hyper alone.
    let takeover: Option<Router> =
        (&service.inner as &dyn std::any::Any).downcast_ref::<Router>().cloned();
    let addresses = Arc::new(AddressCounts::default());
    let max_connections = fit_open_file_limit(config.max_connections.max(1));
    let per_address = config.max_connections_per_address.max(1);
    let mut accept_errors = ErrorThrottle::default();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // At the limit, accept nothing until a connection closes: the backlog holds the rest.
        while stats.in_use() >= max_connections {
            let closed = stats.closed.notified();
            if stats.in_use() < max_connections {
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
                    // Out of file descriptors and the like: say so (not once per attempt), and
                    // wait for a connection to close or a moment to pass instead of spinning.
                    accept_errors.record(&err, stats.open_connections());
                    let closed = stats.closed.notified();
                    tokio::select! {
                        () = closed => {}
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let key = address_key(peer.ip());
        let from = addresses.enter(key);
        let open = OpenGuard::new(stats.clone());
        if from.count() > per_address {
            // A refused connection is not one of its address's open connections, and it is
            // gone within the refusal deadline whatever it sends.
            drop(from);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            let Some(refusing) = addresses.refuse(key) else {
                // Already answering many of this address's connections: close this one at
                // once, so a client reconnecting in a loop holds no more.
                continue;
            };
            let tls = config.tls.clone();
            connections.spawn(async move {
                let _held = (open, refusing);
                tracing::debug!(%peer, "refusing a connection over the per-address limit");
                let _ =
                    tokio::time::timeout(REFUSAL_DEADLINE, refuse(stream, tls, per_address)).await;
            });
            continue;
        }
        let watcher = graceful.watcher();
        let mut service = service.clone();
        let takeover = takeover.clone();
        let config = config.clone();
        let hold = ConnectionHold(Arc::new(Held { _open: open, _address: from }));
        let span = tracing::debug_span!("connection", %peer);
        let streams =
            StreamLimits { addresses: addresses.clone(), key, per_address, total: max_connections };
        connections.spawn(tracing::Instrument::instrument(
            async move {
                service.served().hold = Some(hold.clone());
                service.served().peer = Some(PeerAddr(peer));
                service.streams = Some(streams);
                let _open = hold;
                let timeout = config.header_read_timeout;
                if config.tls.is_none() && !request_begins(&stream, timeout).await {
                    return;
                }
                let mut read = Vec::new();
                let io: Box<dyn Io> = match &config.tls {
                    None => {
                        // Shared: a response written here, or a transport taking the
                        // connection over from hyper, may have a topic's fan-out write to the
                        // socket beside it (see `fanout`).
                        let tcp = Arc::new(stream);
                        if let Some(router) = takeover {
                            let gate = Gate::new(tcp.clone());
                            let max_head = config.max_header_bytes.max(MIN_HEADER_BYTES);
                            let mut shutdown = service.served.signal.clone();
                            // What hyper's service adds to a request (signal, hold, peer), for
                            // the requests answered here.
                            let answering = WithShutdown {
                                inner: router.clone(),
                                stats: service.stats.clone(),
                                streams: None,
                                served: Arc::new(Served {
                                    socket: Some(SocketOf::Gate(gate.clone())),
                                    ..Served::clone(&service.served)
                                }),
                            };
                            loop {
                                // Each future awaited where it is made: kept in a local first,
                                // it would take room twice in this task, which every
                                // connection carries. And what one step leaves (the request
                                // read, the answer made) is spent in a block of its own, so the
                                // steps after it keep no room for it: a stream's whole life is
                                // spent in the last step.
                                let (call, close) = {
                                    let next = takeover::next_request(
                                        gate.tcp(),
                                        read,
                                        &router,
                                        timeout,
                                        max_head,
                                        &mut shutdown,
                                    )
                                    .await;
                                    match next {
                                        First::Gone => return,
                                        First::Hyper(bytes) => {
                                            read = bytes;
                                            break;
                                        }
                                        First::Takeover(request) => {
                                            let close = takeover::wants_close(&request);
                                            let call =
                                                hyper::service::Service::call(&answering, request);
                                            (call, close)
                                        }
                                    }
                                };
                                let answering_it = {
                                    let mut pipelined = Vec::new();
                                    let answer =
                                        takeover::answer_of(&gate, call, &mut pipelined).await;
                                    let Some(Ok(response)) = answer else { return };
                                    takeover::answer(&gate, response, close, pipelined)
                                };
                                match answering_it.await {
                                    Some(pipelined) => read = pipelined,
                                    None => return,
                                }
                            }
                        }
                        service.served().socket = Some(SocketOf::Tcp(tcp.clone()));
                        let shared = SharedTcp(tcp);
                        match read.is_empty() {
                            true => Box::new(shared),
                            false => Box::new(takeover::Rewind::new(read, shared)),
                        }
                    }
                    Some(acceptor) => {
                        // Boxed: the handshake's state (rustls's connection) is large, and
                        // a plain connection's task should not carry room for it.
                        let accept =
                            Box::pin(tokio::time::timeout(timeout, acceptor.accept(stream)));
                        match accept.await {
                            Ok(Ok(tls)) => Box::new(FirstByteDeadline::new(tls, timeout)),
                            Ok(Err(err)) => {
                                tracing::debug!(%err, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                // Boxed: a connection answered above without hyper (an event stream) does not
                // carry room for hyper's builder and connection state in its task.
                Box::pin(serve_with_hyper(io, service, &config, watcher)).await;
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

/// Serves the connection `io` with hyper (HTTP/1.1 or HTTP/2, with upgrades), under `watcher`.
async fn serve_with_hyper<S, B>(
    io: Box<dyn Io>,
    service: WithShutdown<S>,
    config: &ServeConfig,
    watcher: hyper_util::server::graceful::Watcher,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(err = %err, "connection ended with an error");
    }
}

/// What a connection is served over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// HTTP/1's floor for `max_header_bytes`.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// How many connections of one address are answered `429` at once; more are closed unanswered.
const MAX_REFUSING_PER_ADDRESS: usize = 16;

/// Answers every request of a connection over the per-address limit with 429 and closes it.
/// The caller bounds it by [`REFUSAL_DEADLINE`].
async fn refuse(stream: TcpStream, tls: Option<TlsAcceptor>, limit: usize) {
    let io: Box<dyn Io> = match tls {
        None => {
            if !request_begins(&stream, REFUSAL_DEADLINE).await {
                return;
            }
            Box::new(stream)
        }
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => Box::new(tls),
            Err(_) => return,
        },
    };
    let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
        let mut response = refusal(limit);
        response
            .headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false).max_buf_size(MIN_HEADER_BYTES);
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// Logs accept errors (out of file descriptors, say) at most once a second, with how many
/// were left unlogged since.
#[derive(Default)]
struct ErrorThrottle {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

impl ErrorThrottle {
    fn record(&mut self, err: &io::Error, open: usize) {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < Duration::from_secs(1)) {
            self.unlogged += 1;
            return;
        }
        let hint = if err.raw_os_error() == Some(EMFILE) {
            "; the process is out of file descriptors: raise its open-file limit \
             (LimitNOFILE=, ulimit -n) or lower http.max_connections"
        } else {
            ""
        };
        tracing::warn!(%err, open, more = self.unlogged, "accept failed{hint}");
        self.last = Some(now);
        self.unlogged = 0;
    }
}

/// File descriptors kept beside the connections' for the rest of the process: the listener,
/// broker and webhook connections, files.
const SPARE_DESCRIPTORS: u64 = 256;

/// The most connections this process can hold given its open-file limit: `max_connections`
/// when the limit allows it (raising the soft limit up to the hard one if needed), or fewer,
/// with a warning that says what to set, so the server never runs into `EMFILE` before its own
/// limit.
pub fn fit_open_file_limit(max_connections: usize) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let wanted = max_connections as u64 + SPARE_DESCRIPTORS;
        let limit = getrlimit(Resource::Nofile);
        let soft = limit.current.unwrap_or(u64::MAX);
        if soft >= wanted {
            return max_connections;
        }
        let hard = limit.maximum.unwrap_or(u64::MAX);
        let raised = wanted.min(hard);
        let raise = rustix::process::Rlimit { current: Some(raised), maximum: limit.maximum };
        let soft = if setrlimit(Resource::Nofile, raise).is_ok() { raised } else { soft };
        if soft >= wanted {
            return max_connections;
        }
        let fits = usize::try_from(soft.saturating_sub(SPARE_DESCRIPTORS)).unwrap_or(usize::MAX);
        let fits = fits.max(1);
        tracing::warn!(
            max_connections,
            open_file_limit = soft,
            serving = fits,
            "http.max_connections needs {wanted} open files but the process may hold {soft}: \
             serving at most {fits} connections; raise the limit (LimitNOFILE= in the service \
             unit, ulimit -n) or lower http.max_connections"
        );
        fits
    }
    #[cfg(not(unix))]
    max_connections
}

/// `EMFILE`: the process's open-file limit is reached.
const EMFILE: i32 = 24;

/// The key a client address is counted under: an IPv4 address (IPv4-mapped IPv6 included), or
/// the /64 of an IPv6 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Per client address: open connections and HTTP/2 streams, and connections being refused.
#[derive(Debug, Default)]
struct AddressCounts(Mutex<HashMap<IpAddr, Counts>>);

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    refusing: usize,
}

impl AddressCounts {
    fn enter(self: &Arc<Self>, key: IpAddr) -> AddressGuard {
        let mut counts = self.0.lock().expect("address counts lock");
        let entry = counts.entry(key).or_default();
        entry.open += 1;
        AddressGuard { counts: self.clone(), key, count: entry.open }
    }

    /// Counts one more connection being refused, unless the address already has the most.
    fn refuse(self: &Arc<Self>, key: IpAddr) -> Option<RefusalGuard> {
        let mut counts = self.0.lock().expect("address counts lock");
        let entry = counts.entry(key).or_default();
        if entry.refusing >= MAX_REFUSING_PER_ADDRESS {
            return None;
        }
        entry.refusing += 1;
        Some(RefusalGuard { counts: self.clone(), key })
    }

    fn leave(&self, key: IpAddr, change: impl FnOnce(&mut Counts)) {
        let mut counts = self.0.lock().expect("address counts lock");
        if let Some(entry) = counts.get_mut(&key) {
            change(entry);
            if entry.open == 0 && entry.refusing == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// One connection (or HTTP/2 stream) counted against its address, until dropped.
#[derive(Debug)]
struct AddressGuard {
    counts: Arc<AddressCounts>,
    key: IpAddr,
    count: usize,
}

impl AddressGuard {
    /// The address's open connections and streams when this one entered, itself included.
    fn count(&self) -> usize {
        self.count
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        self.counts.leave(self.key, |entry| entry.open -= 1);
    }
}

/// One connection of an address being refused, until dropped.
struct RefusalGuard {
    counts: Arc<AddressCounts>,
    key: IpAddr,
}

impl Drop for RefusalGuard {
    fn drop(&mut self) {
        self.counts.leave(self.key, |entry| entry.refusing -= 1);
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
                if let Some(deadline) = self.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request arrived in time",
                    )));
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
