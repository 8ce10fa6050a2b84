//! One long response that pushes a subscription's deliveries: what the SSE and chunked
//! streaming servers share.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pushpull_core::{Delivery, Subscription};
use tokio::time::{Instant, Sleep};

use crate::{Body, Held, Shutdown};

/// Turns a delivery into the chunks that write it.
pub type Encode = Box<dyn Fn(&Delivery) -> Vec<Bytes> + Send>;

/// How a push response writes: its media type, first chunk, deliveries and heartbeat.
pub struct PushFormat {
    /// The response's `Content-Type`.
    pub content_type: &'static str,
    /// Written first (a preamble, a start record).
    pub first: Bytes,
    /// The chunks of one delivery (a large payload may come as several slices).
    pub encode: Encode,
    /// Written when nothing else was for `heartbeat`.
    pub heartbeat_chunk: Bytes,
    /// How long the stream may stay silent.
    pub heartbeat: Duration,
    /// Counts what the stream writes.
    pub meter: crate::metrics::DeliveryMeter,
}

/// The streaming response for `subscription`, with `Cache-Control: no-cache` and
/// `X-Accel-Buffering: no`, never compressed. hyper polls the body only when it can write, and
/// each poll reads the next delivery, so a reader that stops reading stops the log reading too:
/// its cost is a bounded buffer, and retention turns the backlog into a gap. The response ends
/// on `shutdown` or a broker error; `open` is held for as long as it lives.
pub fn push_response(
    subscription: Subscription,
    format: PushFormat,
    shutdown: Shutdown,
    open: Held,
) -> Response<Body> {
    let content_type = format.content_type;
    let state = Pushing {
        queue: VecDeque::from([format.first.clone()]),
        heartbeat: Box::pin(tokio::time::sleep(format.heartbeat)),
        last_write: Instant::now(),
        subscription,
        format,
        shutdown,
        _open: open,
    };
    let body = StreamBody::new(futures::stream::unfold(state, Pushing::next).map(Ok));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Pushing {
    subscription: Subscription,
    format: PushFormat,
    shutdown: Shutdown,
    /// Chunks decided but not yet written.
    queue: VecDeque<Bytes>,
    /// One timer for the stream's life, re-armed only when it fires: a delivery costs no timer.
    heartbeat: Pin<Box<Sleep>>,
    /// When the last chunk was handed over.
    last_write: Instant,
    _open: Held,
}

impl Pushing {
    async fn next(mut self) -> Option<(Frame<Bytes>, Self)> {
        if let Some(chunk) = self.queue.pop_front() {
            return Some((Frame::data(chunk), self));
        }
        loop {
            tokio::select! {
                delivery = self.subscription.next() => match delivery? {
                    Ok(delivery) => {
                        let chunks = (self.format.encode)(&delivery);
                        self.format.meter.delivered(&delivery);
                        self.format.meter.bytes(chunks.iter().map(Bytes::len).sum());
                        self.queue.extend(chunks);
                        break;
                    }
                    Err(error) => {
                        crate::metrics::broker_error("subscribe", &error);
                        tracing::warn!(%error, "push response ended by a broker error");
                        return None;
                    }
                },
                () = self.heartbeat.as_mut() => {
                    let due = self.last_write + self.format.heartbeat;
                    if Instant::now() >= due {
                        self.queue.push_back(self.format.heartbeat_chunk.clone());
                        self.heartbeat.as_mut().reset(Instant::now() + self.format.heartbeat);
                        break;
                    }
                    // Deliveries went out since it was armed: silent for less than a beat.
                    self.heartbeat.as_mut().reset(due);
                }
                () = self.shutdown.wait() => return None,
            }
        }
        self.last_write = Instant::now();
        let chunk = self.queue.pop_front()?;
        Some((Frame::data(chunk), self))
    }
}
