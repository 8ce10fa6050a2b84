//! A response body that ends at a deadline: how a long-lived response stops when the token
//! that allowed it expires.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// `B`, ended cleanly at `deadline` if it is still waiting for more then. A body of known
/// length is never cut (its length was promised); a stream (an event stream, a chunked
/// stream) ends, and the client reconnects from its cursor.
pub struct EndsAt<B> {
    inner: Option<Pin<Box<B>>>,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> EndsAt<B> {
    /// `body`, ending at `deadline` (never, with `None`).
    pub fn new(body: B, deadline: Option<Instant>) -> Self {
        Self { inner: Some(Box::pin(body)), deadline, sleep: None }
    }
}

impl<B: Body<Data = Bytes>> Body for EndsAt<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if let Some(sleep) = this.sleep.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            tracing::debug!("the response's deadline passed; ending it");
            this.inner = None;
            return Poll::Ready(None);
        }
        let polled = inner.as_mut().poll_frame(cx);
        if polled.is_pending()
            && this.sleep.is_none()
            && let Some(deadline) = this.deadline.filter(|_| inner.size_hint().exact().is_none())
        {
            let mut sleep = Box::pin(tokio::time::sleep_until(deadline));
            if sleep.as_mut().poll(cx).is_ready() {
                this.inner = None;
                return Poll::Ready(None);
            }
            this.sleep = Some(sleep);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |inner| inner.size_hint())
    }
}

impl<B> std::fmt::Debug for EndsAt<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndsAt").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}
