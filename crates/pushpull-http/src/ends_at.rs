//! A response body that ends when its rights do: how a long-lived response stops when the
//! token that allowed it expires or is revoked.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::revoke::Ending;

/// `B`, ended cleanly when `ending` resolves if it is still waiting for more then. A body of
/// known length is never cut (its length was promised); a stream (an event stream, a chunked
/// stream) ends, and the client reconnects from its cursor.
pub struct EndsAt<B> {
    inner: Option<Pin<Box<B>>>,
    ending: Option<Ending>,
}

impl<B> EndsAt<B> {
    /// `body`, ending when `ending` resolves (never, with `None`): [`Grant::ending`].
    ///
    /// [`Grant::ending`]: crate::Grant::ending
    pub fn new(body: B, ending: Option<Ending>) -> Self {
        Self { inner: Some(Box::pin(body)), ending }
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
        if inner.size_hint().exact().is_none()
            && let Some(ending) = this.ending.as_mut()
            && let Poll::Ready(why) = ending.as_mut().poll(cx)
        {
            tracing::debug!(?why, "the response's rights ended; ending it");
            this.inner = None;
            return Poll::Ready(None);
        }
        inner.as_mut().poll_frame(cx)
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
        f.debug_struct("EndsAt").field("ending", &self.ending.is_some()).finish_non_exhaustive()
    }
}
