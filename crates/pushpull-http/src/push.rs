//! One long response that pushes a subscription's deliveries: what the SSE and chunked
//! streaming servers share.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::Method;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pushpull_core::{
    Broker, Client, Cursor, Delivery, Error, MultiSubscription, SetKeys, Subscription,
};
use std::sync::Arc;
use tokio::time::{Instant, Sleep};

use crate::fanout::{Encoder, FanOut, Gate, Seat};
use crate::metrics::DeliveryMeter;
use crate::presence::{Membership, Presences};
use crate::router::{HandlerResult, HttpRequest, Params, Route, Router};
use crate::transport::{Context, LiveCount, Measure, Mount, TransportServer};
use crate::{Body, Gauge, Held, PageConfig, Shutdown};

/// Turns a delivery into the chunks that write it. On a connection that follows many topics,
/// for a format that [`writes_token`](PushFormat::writes_token), the second argument is the
/// resume token after it (the [`CursorSet`](pushpull_core::CursorSet)'s text); `None`
/// otherwise.
pub type Encode = Box<dyn Fn(&Delivery, Option<&str>) -> Vec<Bytes> + Send>;

/// Where a push response starts, for its first chunk.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// One topic's stream, from this position.
    One(Cursor),
    /// Many topics' stream, from this cursor set (its text).
    Many(&'a str),
}

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
    /// Whether [`encode`](Self::encode) writes the resume token of a stream of many topics
    /// (SSE's `id:`): only then is the cursor set written out after each delivery.
    pub writes_token: bool,
    /// For a stream of one topic, when its deliveries are written the same for every stream
    /// of a style: a topic's [fan-out](crate::fanout) may write them for it. `None`: the
    /// stream writes its own.
    pub fanout: Option<Fanned>,
}

/// How a fan-out writes the deliveries of a [`PushFormat`]: as `encode` makes them (one chunk,
/// the same as the format's own `encode` for a stream of one topic), for every stream of
/// `style` alike.
#[derive(Debug, Clone, Copy)]
pub struct Fanned {
    /// Streams of one style share a topic's fan-out.
    pub style: &'static str,
    /// A delivery's chunk.
    pub encode: fn(&Delivery) -> Bytes,
}

/// The streaming response for `subscription`, with `Cache-Control: no-cache` and
/// `X-Accel-Buffering: no`, never compressed. The server polls the body only when it can write,
/// and each poll reads the next delivery, so a reader that stops reading stops the log reading:
/// its cost is a bounded buffer, and retention turns the backlog into a gap. The response ends
/// on `shutdown` or a broker error; `open` is held for as long as it lives, and `meter` counts
/// what it writes.
pub fn push_response(
    subscription: impl Into<Feed>,
    format: PushFormat,
    meter: DeliveryMeter,
    shutdown: Shutdown,
    open: impl Into<Open>,
) -> Response<Body> {
    seated_response(subscription.into(), format, meter, shutdown, open.into(), None)
}

/// [`push_response`], whose stream takes a seat in its topic's fan-out when `seating` allows.
fn seated_response(
    subscription: Feed,
    format: PushFormat,
    meter: DeliveryMeter,
    shutdown: Shutdown,
    open: Open,
    seating: Option<Box<Seating>>,
) -> Response<Body> {
    let content_type = format.content_type;
    let state = Pushing {
        seating,
        queue: VecDeque::from([format.first.clone()]),
        heartbeat: Box::pin(tokio::time::sleep(format.heartbeat)),
        last_write: Instant::now(),
        feed: subscription,
        format,
        meter,
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

/// What a push response reads: one topic's subscription, or many topics' with how their
/// resume token is written.
pub enum Feed {
    /// One topic.
    One(Subscription),
    /// Many topics.
    Many(MultiSubscription, SetKeys),
}

impl From<Subscription> for Feed {
    fn from(subscription: Subscription) -> Self {
        Feed::One(subscription)
    }
}

impl Feed {
    async fn next(&mut self) -> Option<pushpull_core::Result<Delivery>> {
        match self {
            Feed::One(subscription) => subscription.next().await,
            Feed::Many(subscription, _) => subscription.next().await,
        }
    }

    fn token(&self) -> Option<String> {
        match self {
            Feed::One(_) => None,
            Feed::Many(subscription, keys) => Some(keys.encode(subscription.cursors())),
        }
    }
}

struct Pushing {
    feed: Feed,
    /// Where a stream of one topic on a connection the serve loop writes may be written by
    /// its topic's fan-out.
    seating: Option<Box<Seating>>,
    format: PushFormat,
    meter: DeliveryMeter,
    shutdown: Shutdown,
    /// Chunks decided but not yet written.
    queue: VecDeque<Bytes>,
    /// One timer for the stream's life, re-armed only when it fires: a delivery costs no timer.
    heartbeat: Pin<Box<Sleep>>,
    /// When the last chunk was handed over.
    last_write: Instant,
    _open: Open,
}

/// What a push response holds for as long as it lives: its place in the count of open
/// responses, and its memberships of the topics it follows (their members leave when it ends).
#[derive(Debug)]
pub struct Open {
    /// The count of open responses.
    pub held: Held,
    /// Its memberships.
    pub members: Vec<Membership>,
}

impl From<Held> for Open {
    fn from(held: Held) -> Self {
        Self { held, members: Vec::new() }
    }
}

impl Pushing {
    // Not an `async fn`: one taking `mut self` keeps the state twice in its future (the
    // argument, and the mutable binding it is moved into), and a waiting stream is this future.
    fn next(self) -> impl std::future::Future<Output = Option<(Frame<Bytes>, Self)>> + Send {
        let mut this = self;
        async move {
            if let Some(chunk) = this.queue.pop_front() {
                return Some((Frame::data(chunk), this));
            }
            loop {
                let seated = this.seating.as_ref().is_some_and(|s| s.seat.is_some());
                let may_sit = this.seating.as_ref().is_some_and(|s| s.seat.is_none() && s.again);
                let event = tokio::select! {
                    delivery = this.feed.next(), if !seated => Event::Delivery(delivery),
                    event = seating_event(this.seating.as_deref()), if may_sit || seated => event,
                    () = this.heartbeat.as_mut() => Event::Beat,
                    () = this.shutdown.wait() => return None,
                };
                match event {
                    Event::Delivery(delivery) => {
                        if this.deliver(delivery?)? {
                            break;
                        }
                    }
                    Event::Idle => {
                        // Everything written and nothing ready: a seat, unless a delivery
                        // came meanwhile.
                        match this.feed.next().now_or_never() {
                            Some(delivery) => {
                                if this.deliver(delivery?)? {
                                    break;
                                }
                            }
                            // Boxed, as below: once in a while, and a waiting stream keeps
                            // no room for it.
                            None => Box::pin(this.sit()).await,
                        }
                    }
                    Event::LetGo => {
                        if Box::pin(this.stand()).await.is_err() {
                            return None;
                        }
                        // An empty chunk: the writer writes what the fan-out left pending.
                        this.queue.push_back(Bytes::new());
                        break;
                    }
                    Event::Beat => {
                        let due = this.last_write + this.format.heartbeat;
                        if Instant::now() >= due {
                            this.queue.push_back(this.format.heartbeat_chunk.clone());
                            this.heartbeat.as_mut().reset(Instant::now() + this.format.heartbeat);
                            break;
                        }
                        // Deliveries went out since it was armed: silent for less than a beat.
                        this.heartbeat.as_mut().reset(due);
                    }
                }
            }
            this.last_write = Instant::now();
            let chunk = this.queue.pop_front()?;
            Some((Frame::data(chunk), this))
        }
    }
}

/// What a push response's stream waited for.
enum Event {
    Delivery(Option<pushpull_core::Result<Delivery>>),
    /// Its connection's writer has written everything: it may take a seat.
    Idle,
    /// Its fan-out let it go.
    LetGo,
    Beat,
}

/// A stream's place (or the chance of one) in its topic's fan-out.
pub(crate) struct Seating {
    fanout: Arc<FanOut>,
    gate: Arc<Gate>,
    broker: Arc<dyn Broker>,
    topic: pushpull_core::Topic,
    style: &'static str,
    encode: Encoder,
    seat: Option<Seat>,
    /// Whether to try for a seat when next idle (at first, and after a delivery of its own).
    again: bool,
}

/// What a stream's seating comes to: seated, its fan-out let it go; not seated, its writer
/// is idle (and it may sit).
fn seating_event(seating: Option<&Seating>) -> impl std::future::Future<Output = Event> + '_ {
    std::future::poll_fn(move |cx| match seating {
        Some(Seating { seat: Some(_), gate, .. }) => gate.poll_attention(cx).map(|()| Event::LetGo),
        Some(Seating { seat: None, gate, .. }) => gate.poll_idle(cx).map(|()| Event::Idle),
        None => std::task::Poll::Pending,
    })
}

impl Pushing {
    /// Queues the chunks of `delivery`; `Some(true)` when there are chunks to write, `None`
    /// when the stream ends (a broker error).
    fn deliver(&mut self, delivery: pushpull_core::Result<Delivery>) -> Option<bool> {
        match delivery {
            Ok(delivery) => {
                let token = if self.format.writes_token { self.feed.token() } else { None };
                let chunks = (self.format.encode)(&delivery, token.as_deref());
                self.meter.delivered(&delivery);
                self.meter.bytes(chunks.iter().map(Bytes::len).sum());
                self.queue.extend(chunks);
                if let Some(seating) = &mut self.seating {
                    seating.again = true;
                }
                Some(!self.queue.is_empty())
            }
            Err(error) => {
                crate::metrics::broker_error("subscribe", &error);
                tracing::warn!(%error, "push response ended by a broker error");
                None
            }
        }
    }

    /// Takes a seat in the topic's fan-out, from the subscription's cursor, if it can have one.
    async fn sit(&mut self) {
        let (Some(seating), Feed::One(subscription)) = (&mut self.seating, &self.feed) else {
            return;
        };
        seating.again = false;
        let cursor = subscription.cursor();
        let Seating { fanout, topic, style, encode, gate, .. } = &**seating;
        seating.seat = fanout.join(topic, style, encode, cursor, gate).await;
    }

    /// Takes the stream back from a fan-out that let it go: from where the fan-out left it.
    async fn stand(&mut self) -> Result<(), Error> {
        let (Some(seating), Feed::One(subscription)) = (&mut self.seating, &mut self.feed) else {
            return Ok(());
        };
        let Some(resume) = seating.seat.as_ref().and_then(Seat::let_go) else { return Ok(()) };
        seating.seat = None;
        if subscription.cursor() != resume {
            *subscription =
                seating.broker.subscribe(&seating.topic, resume).await.inspect_err(|error| {
                    crate::metrics::broker_error("subscribe", error);
                    tracing::warn!(%error, "push response ended by a broker error");
                })?;
        }
        Ok(())
    }
}

/// A one-way push transport over one long response (Server-Sent Events, chunked streaming):
/// its route, where a request starts and how its response writes. [`PushServer`] does the rest.
pub trait PushTransport: Send + Sync + 'static {
    /// The transport's name, in configuration, metrics and spans.
    const NAME: &'static str;
    /// The route of a topic's push response, such as `/v1/topics/{topic}/events`.
    const PATH: &'static str;
    /// The route of a push response that follows many topics (`?topic=` repeated, prefixes
    /// and server-decided topics too), such as `/v1/events`.
    const MANY_PATH: &'static str;
    /// The transport's server settings, all optional (`#[serde(default)]`), unknown keys
    /// refused.
    type Config: Default
        + Clone
        + std::fmt::Debug
        + PartialEq
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync;

    /// Checks the settings; an error names the key as `NAME.key`.
    fn check(config: &Self::Config) -> Result<(), Error>;

    /// Where the request asks its stream to start.
    fn start(request: &HttpRequest) -> Result<Cursor, Error>;

    /// Where a request to follow many topics asks to start, as text: a cursor set that
    /// resumes them, or one start for them all. The default reads `after`, then the
    /// `Pushpull-Cursor` header.
    fn resume(request: &HttpRequest) -> Result<Option<String>, Error> {
        crate::request::resume_text(request)
    }

    /// How the response to `request` writes, for a subscription that starts at `start`.
    fn format(config: &Self::Config, request: &HttpRequest, start: Start<'_>) -> PushFormat;
}

/// The server of a [`PushTransport`] over a broker: a cheap-`Clone` tower (and hyper) service
/// serving publishing, pages and the transport's push route; its [`routes`](Self::routes) mount
/// the push route beside other transports'.
///
/// A push response reads the broker's shared log by cursor and writes only as fast as the
/// client reads, so a client that stops reading costs a bounded buffer and, once retention
/// passes it, gets a gap instead of unbounded memory.
pub struct PushServer<P: PushTransport> {
    streams: Streams<P>,
    router: Router,
}

impl<P: PushTransport> Clone for PushServer<P> {
    fn clone(&self) -> Self {
        Self { streams: self.streams.clone(), router: self.router.clone() }
    }
}

impl<P: PushTransport> std::fmt::Debug for PushServer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushServer")
            .field("transport", &P::NAME)
            .field("config", &self.streams.config)
            .field("open", &self.streams.open)
            .finish()
    }
}

/// What the push route needs; the routes hold this, not the [`PushServer`] (whose router holds
/// the routes).
struct Streams<P: PushTransport> {
    broker: Arc<dyn Broker>,
    /// The fan-outs of its streams' topics.
    fanout: Arc<FanOut>,
    max_topics: usize,
    config: Arc<P::Config>,
    open: Gauge,
    meter: DeliveryMeter,
    presences: Presences,
}

impl<P: PushTransport> Clone for Streams<P> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
            fanout: self.fanout.clone(),
            max_topics: self.max_topics,
            config: self.config.clone(),
            open: self.open.clone(),
            meter: self.meter.clone(),
            presences: self.presences.clone(),
        }
    }
}

impl<P: PushTransport> PushServer<P> {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: P::Config) -> Result<Self, Error> {
        Self::within(&Context::new(broker).with_pages(PageConfig::default(), P::NAME), config)
    }

    fn within(context: &Context, config: P::Config) -> Result<Self, Error> {
        P::check(&config)?;
        let meter = DeliveryMeter::new(P::NAME);
        let streams = Streams::<P> {
            broker: context.broker.clone(),
            fanout: FanOut::new(context.broker.clone(), meter.clone()),
            max_topics: context.max_topics,
            config: Arc::new(config),
            open: Gauge::new(),
            meter,
            presences: context.presences(),
        };
        let router = crate::api(context, None).with(streams.routes());
        Ok(Self { streams, router })
    }

    /// Push responses open right now.
    pub fn open_streams(&self) -> usize {
        self.streams.open.get()
    }

    /// The fan-outs of its streams' topics: what they wrote, and how many streams they let go.
    pub fn fanout(&self) -> &FanOut {
        &self.streams.fanout
    }

    /// The push route, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        self.streams.routes()
    }

    /// The router it serves: publishing, the page route (for clients' `fetch`) and the push
    /// route.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

crate::serve_with_router!(impl[P: PushTransport] PushServer<P>);

impl<P: PushTransport> TransportServer for PushServer<P> {
    const NAME: &'static str = P::NAME;
    type Config = P::Config;

    fn check(config: &P::Config) -> Result<(), Error> {
        P::check(config)
    }

    fn build(context: &Context, config: P::Config) -> Result<Self, Error> {
        Self::within(context, config)
    }

    fn mount(&self) -> Mount {
        let open = self.streams.open.clone();
        Mount::routes(self.routes()).with_live(LiveCount::new(
            "open_streams",
            &[Measure::Connections, Measure::Subscriptions],
            move || open.get(),
        ))
    }
}

impl<P: PushTransport> Streams<P> {
    fn routes(&self) -> Vec<Route> {
        let (one, many) = (self.clone(), self.clone());
        vec![
            Route::new(Method::GET, P::PATH, move |req: HttpRequest, params: Params| {
                let streams = one.clone();
                async move { streams.stream(req, params).await }
            })
            .long_lived(),
            Route::new(Method::GET, P::MANY_PATH, move |req: HttpRequest, _: Params| {
                let streams = many.clone();
                async move { streams.stream_many(req).await }
            })
            .long_lived(),
        ]
    }

    async fn stream_many(&self, req: HttpRequest) -> HandlerResult {
        let resume = P::resume(&req)?;
        let (follow, keys) = crate::request::follow_request(
            &req,
            resume.as_deref(),
            Cursor::Latest,
            self.max_topics,
        )?;
        let info = self.info(&req)?;
        let named: Vec<_> = follow.named_topics().cloned().collect();
        let broker: Arc<dyn Client> = self.broker.clone();
        let subscription = pushpull_core::follow(broker, follow)
            .await
            .inspect_err(|e| crate::metrics::broker_error("subscribe", e))?;
        // A member of each topic it names (not of those a prefix selects).
        let mut members = Vec::new();
        for topic in &named {
            let grant = crate::Grant::of(&req);
            members.extend(self.presences.join_held(topic, grant, info.clone()).await?);
        }
        let token = keys.encode(subscription.cursors());
        let format = P::format(&self.config, &req, Start::Many(&token));
        Ok(push_response(
            Feed::Many(subscription, keys),
            format,
            self.meter.clone(),
            Shutdown::of(&req),
            Open { held: self.open.hold(), members },
        ))
    }

    async fn stream(&self, req: HttpRequest, params: Params) -> HandlerResult {
        let topic = crate::request::topic(&params)?;
        let cursor = P::start(&req)?;
        let info = self.info(&req)?;
        let subscription = self
            .broker
            .subscribe(&topic, cursor)
            .await
            .inspect_err(|e| crate::metrics::broker_error("subscribe", e))?;
        let grant = crate::Grant::of(&req);
        let member = self.presences.join_held(&topic, grant, info).await?;
        let format = P::format(&self.config, &req, Start::One(subscription.cursor()));
        // On a connection the serve loop writes, the topic's fan-out may write for it.
        let seating = match (format.fanout, self.fanout.gate_of(&req)) {
            (Some(Fanned { style, encode }), Some(gate)) => Some(Box::new(Seating {
                fanout: self.fanout.clone(),
                gate,
                broker: self.broker.clone(),
                topic,
                style,
                encode: Arc::new(move |delivery: &Delivery| {
                    crate::takeover::chunk(&encode(delivery))
                }),
                seat: None,
                // As soon as its writer is first idle (the head written) with nothing ready:
                // streams opened before a message have it written by the fan-out, instead of
                // each by its own task.
                again: true,
            })),
            _ => None,
        };
        Ok(seated_response(
            subscription.into(),
            format,
            self.meter.clone(),
            Shutdown::of(&req),
            Open { held: self.open.hold(), members: member.into_iter().collect() },
            seating,
        ))
    }

    /// The `info` query parameter, checked.
    fn info(&self, req: &HttpRequest) -> Result<Option<serde_json::Value>, Error> {
        let query = crate::router::query_params(req);
        self.presences.info(query.get(crate::presence::INFO_PARAM).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event stream waits in its `next` future for its whole life, so that future must
    /// keep the stream's state once: an `async fn next(mut self)` kept it twice (the argument
    /// and the binding).
    #[tokio::test]
    async fn a_waiting_stream_keeps_its_state_once() {
        let broker = pushpull_core::MemoryBroker::new();
        let topic: pushpull_core::Topic = "t".parse().expect("a topic");
        let subscription = pushpull_core::Subscribe::subscribe(&broker, &topic, Cursor::Latest)
            .await
            .expect("a subscription");
        let pushing = Pushing {
            seating: None,
            feed: subscription.into(),
            format: PushFormat {
                content_type: "text/plain",
                first: Bytes::new(),
                encode: Box::new(|_, _| Vec::new()),
                heartbeat_chunk: Bytes::new(),
                heartbeat: Duration::from_secs(15),
                writes_token: false,
                fanout: None,
            },
            meter: DeliveryMeter::new("test"),
            shutdown: Shutdown::never(),
            queue: VecDeque::new(),
            heartbeat: Box::pin(tokio::time::sleep(Duration::from_secs(15))),
            last_write: Instant::now(),
            _open: Gauge::new().hold().into(),
        };
        let state = std::mem::size_of::<Pushing>();
        let waiting = std::mem::size_of_val(&pushing.next());
        assert!(waiting < 2 * state, "the stream's state is {state} bytes, its future {waiting}");
    }
}
