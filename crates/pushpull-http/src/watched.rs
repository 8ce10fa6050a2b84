//! Connections that say when they end, so a request handed to a pooled connection at the
//! moment it closes fails at once instead of waiting for its time-out.
//!
//! hyper's HTTP/1 client hands a request to a connection's task through a channel. When the
//! task ends on the peer's close at the very moment a request is sent to it (the connection
//! looked idle and open when the pool gave it out), the request can be left in the channel
//! after the task has drained it: nothing answers it and nothing drops it while the pool's
//! handle lives, so the caller waits for its whole time-out. A network blip or a server closing
//! an idle keep-alive connection is enough. The connector here wraps each connection so that
//! dropping it (the task ending) fires a signal, and [`answered_or_ended`] races a response
//! against that signal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Request, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, capture_connection};
use tokio::sync::Notify;

/// Fired when a connection's I/O is dropped, which hyper does when the connection's task ends.
#[derive(Debug, Default)]
struct Ended {
    ended: AtomicBool,
    notify: Notify,
}

impl Ended {
    fn fire(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The end signal of a connection, carried in its [`Connected`] metadata.
#[derive(Debug, Clone)]
struct EndSignal(Arc<Ended>);

/// A connection's I/O that fires its end signal when dropped.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    inner: T,
    ended: Arc<Ended>,
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        self.ended.fire();
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Watched<T> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(EndSignal(self.ended.clone()))
    }
}

/// A connector whose connections fire an end signal when their task ends.
#[derive(Debug, Clone)]
pub(crate) struct WatchingConnector<C>(pub(crate) C);

impl<C> tower_service::Service<Uri> for WatchingConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Watched<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let inner = connecting.await?;
            Ok(Watched { inner, ended: Arc::default() })
        })
    }
}

/// What became of a request: answered, or its connection ended first.
pub(crate) enum Outcome<T> {
    /// The response (or the client's error) arrived.
    Answered(T),
    /// The connection the request went out on ended before it was answered: it never will be.
    Ended,
}

/// Sends `request` with `send` and waits for the answer, or for the end of the connection it
/// went out on, whichever comes first (the answer, if both are there).
pub(crate) async fn answered_or_ended<B, F, T>(
    mut request: Request<B>,
    send: impl FnOnce(Request<B>) -> F,
) -> Outcome<T>
where
    F: Future<Output = T>,
{
    let mut captured = capture_connection(&mut request);
    let answer = send(request);
    let ended = async move {
        let signal = {
            let metadata = captured.wait_for_connection_metadata().await;
            let mut extensions = http::Extensions::new();
            if let Some(connected) = metadata.as_ref() {
                connected.get_extras(&mut extensions);
            }
            extensions.remove::<EndSignal>()
        };
        match signal {
            Some(EndSignal(ended)) => ended.wait().await,
            // No connection was chosen (the request failed first) or it is not one of ours:
            // only the answer can end the wait.
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        answer = answer => Outcome::Answered(answer),
        () = ended => Outcome::Ended,
    }
}
