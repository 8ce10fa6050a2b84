//! Serving a [`Router`](crate::Router) (or any hyper service) on a TCP listener.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How long a client may take to send a request's head, counted from the moment the
    /// server waits for one (so it also closes idle keep-alive connections). A client that
    /// connects and sends nothing is disconnected after this long.
    pub header_read_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight before closing them.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
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
    let service =
        WithShutdown { inner: service, signal: Shutdown(signal), stats: stats.clone(), hold: None };
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
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
        connections.spawn(async move {
            service.hold = Some(hold.clone());
            let _open = hold;
            if !request_begins(&stream, config.header_read_timeout).await {
                return;
            }
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout);
            builder.http2().timer(TokioTimer::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(err = %err, "connection ended with an error");
            }
        });
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
