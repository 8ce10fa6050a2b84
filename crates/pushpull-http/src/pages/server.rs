//! The page route's server side: a page at once, or held until a message arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use futures::{FutureExt, StreamExt};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use pushpull_core::{Broker, Cursor, Delivery, Error, FollowRequest, Message, Page, Topic};

use super::config::PageConfig;
use super::held::{self, HeldPolls, Seating};
use super::wire::{POLL_INTERVAL_HEADER, WAIT_HEADER, etag, if_none_match_matches};
use crate::gauge::Gauge;
use crate::metrics::{self, DeliveryMeter};
use crate::presence::Presences;
use crate::request;
use crate::response::{Body, json};
use crate::router::{HandlerResult, HttpRequest, Params, Route, query_params};
use crate::serve::Shutdown;
use crate::transport::Context;

/// The page headers of pushpull's own, named once (a name given as a `&str` is copied into a
/// new `HeaderName` on every insert).
const POLL_INTERVAL: HeaderName = HeaderName::from_static(POLL_INTERVAL_HEADER);
const WAIT: HeaderName = HeaderName::from_static(WAIT_HEADER);

/// The route of a topic's messages.
pub const MESSAGES_PATH: &str = "/v1/topics/{topic}/messages";
/// The route of many topics' messages: `?topic=` repeated (names, `PREFIX*`), or none for
/// what the token may read.
pub const MANY_MESSAGES_PATH: &str = "/v1/messages";

/// Long polling's part of the page route: how long a request may be held, and the count of
/// requests held now.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The longest a request is held; a longer `wait` is cut to it.
    pub max_wait: Duration,
    /// Counts the requests held right now.
    pub held: Gauge,
    /// Counts the pages answered to requests that asked to wait.
    pub meter: DeliveryMeter,
    /// Answers the polls held at a topic's end from one task per topic, which writes each new
    /// message's answer to all of them, instead of waking each poll's own task (polls on plain
    /// HTTP/1.1 connections the server answers itself). Off, every held poll answers itself.
    pub fanout: bool,
    /// Counts the held polls answered by their topic's task.
    pub by_topic: Arc<std::sync::atomic::AtomicU64>,
}

/// `GET /v1/topics/{topic}/messages?after=CURSOR&limit=N`: a JSON page, with a strong `ETag`,
/// `Cache-Control: no-cache` and the `Pushpull-Poll-Interval-Ms` hint; a request whose
/// `If-None-Match` matches gets `304 Not Modified` and no body.
///
/// With `hold` (long polling), `wait=SECONDS` and nothing after the cursor, the request is held
/// until a message is published or the wait passes (cut to `max_wait`), or the server shuts
/// down; the answer carries `Pushpull-Wait-Ms`, the wait applied (`0` for `wait=0`, answered at
/// once). A held request is a future parked on the topic's wake-up: no thread, no buffer, and
/// dropped the moment its client hangs up. Without `hold`, `wait` is ignored and the answer
/// has no `Pushpull-Wait-Ms`, which is how a long-polling client tells.
///
/// The broker, the settings and the meter of pages answered at once come from `context`; a
/// request that asked to wait is counted by the hold's meter.
pub fn page_route(context: &Context, hold: Option<Hold>) -> Route {
    // Held polls at a topic's end are answered by the topic's task (see `held`).
    let tasks = hold.as_ref().filter(|hold| hold.fanout).map(|hold| {
        let (meter, answered) = (hold.meter.clone(), hold.by_topic.clone());
        HeldPolls::new(context.broker.clone(), context.pages.clone(), meter, answered)
    });
    let shared = Arc::new((
        context.broker.clone(),
        context.pages.clone(),
        hold,
        DeliveryMeter::new(context.page_transport),
        context.presences(),
        (SharedPages::default(), tasks),
    ));
    let holds = shared.2.is_some();
    let route = Route::new(Method::GET, MESSAGES_PATH, move |req: HttpRequest, params: Params| {
        // The request is read here, before its future starts: what a held poll keeps while
        // it waits is what `Asked` holds, not the request (a held poll's future is most of
        // what it costs while it waits).
        let (_, config, hold, _, presences, _) = &*shared;
        let asked = match Asked::read(config, hold.as_ref(), presences, &req, &params) {
            Ok(asked) => asked,
            Err(error) => return Either::Left(std::future::ready(Err(error))),
        };
        let shared = shared.clone();
        Either::Right(async move {
            let (broker, config, hold, meter, presences, (pages, tasks)) = &*shared;
            let hold = hold.as_ref();
            let answering = Answering { broker: &**broker, config, hold, pages, tasks };
            asked.answer(answering, meter, presences).await
        })
    });
    // A held poll lives until a message comes: answered without hyper's connection state.
    if holds { route.long_lived() } else { route }
}

/// What the page route answers with: the broker, the settings, long polling's hold, and the
/// bytes of the pages last answered.
struct Answering<'a> {
    broker: &'a dyn Broker,
    config: &'a PageConfig,
    hold: Option<&'a Hold>,
    pages: &'a SharedPages,
    tasks: &'a Option<Arc<HeldPolls>>,
}

/// The body of the page last answered on each topic, JSON and (once a client took it) gzip.
///
/// The polls one message wakes were all at the topic's end, so they ask for the same page: the
/// first to answer encodes it (and compresses it, if its client takes gzip), the others answer
/// with its bytes. Messages never change, so a page without a gap is fixed by its first message
/// and its end (a gap's body depends on where each reader stood: such pages, and empty ones,
/// are made each time). One page per topic; the table is emptied when it holds
/// [`SHARED_TOPICS`], so it is bounded by the topics polled lately.
#[derive(Default)]
pub(super) struct SharedPages(std::sync::Mutex<HashMap<Topic, SharedPage>>);

/// One topic's page in [`SharedPages`].
struct SharedPage {
    first: Cursor,
    next: Cursor,
    json: bytes::Bytes,
    gzip: Option<bytes::Bytes>,
}

/// The most topics [`SharedPages`] holds a page of.
const SHARED_TOPICS: usize = 4096;

impl SharedPages {
    /// The body of `page`, a page of `topic`, as [`encoded`] makes it: from the table when the
    /// page last answered on the topic is this one.
    fn body(
        &self,
        topic: &Topic,
        page: &Page,
        gzip: bool,
        min_gzip: usize,
    ) -> (bytes::Bytes, bool) {
        let first = page.messages.first().map(Message::cursor);
        let Some(first) = first.filter(|_| page.gap.is_none()) else {
            return encoded(page, gzip, min_gzip);
        };
        let this = |shared: &SharedPage| shared.first == first && shared.next == page.next;
        let kept = {
            let pages = self.0.lock().expect("shared pages lock");
            pages.get(topic).filter(|shared| this(shared)).map(|s| (s.json.clone(), s.gzip.clone()))
        };
        let made = kept.is_none();
        let (json, kept_gzip) =
            kept.unwrap_or_else(|| (crate::wire::encode_page(page).into(), None));
        let compress = gzip && json.len() >= min_gzip;
        match (made, compress, kept_gzip) {
            (_, true, Some(gzip)) => return (gzip, true),
            (false, false, _) => return (json, false),
            _ => {}
        }
        // Encoded or compressed here, outside the lock: kept for the polls that follow.
        let gzip = compress.then(|| bytes::Bytes::from(crate::gzip::compress(&json)));
        {
            let mut pages = self.0.lock().expect("shared pages lock");
            if made && pages.len() >= SHARED_TOPICS && !pages.contains_key(topic) {
                pages.clear();
            }
            match pages.get_mut(topic) {
                Some(shared) if this(shared) => {
                    if shared.gzip.is_none() {
                        shared.gzip.clone_from(&gzip);
                    }
                }
                _ => {
                    let (json, gzip) = (json.clone(), gzip.clone());
                    pages.insert(topic.clone(), SharedPage { first, next: page.next, json, gzip });
                }
            }
        }
        match gzip {
            Some(gzip) => (gzip, true),
            None => (json, false),
        }
    }
}

/// The body of `page`: its JSON, gzip-compressed (then true) when `gzip` allows it and the
/// JSON is at least `min_gzip` bytes long.
fn encoded(page: &Page, gzip: bool, min_gzip: usize) -> (bytes::Bytes, bool) {
    plain_or_gzip(crate::wire::encode_page(page), gzip, min_gzip)
}

/// `json`, gzip-compressed (then true) when `gzip` allows it and it is at least `min_gzip`
/// bytes long: the one place that decides.
fn plain_or_gzip(json: Vec<u8>, gzip: bool, min_gzip: usize) -> (bytes::Bytes, bool) {
    match gzip && json.len() >= min_gzip {
        true => (crate::gzip::compress(&json).into(), true),
        false => (json.into(), false),
    }
}

/// A page request, read: all its answer needs.
struct Asked {
    request: PageRequest,
    /// How long it may be held (`wait=`), when the route holds.
    wait: Option<Duration>,
    shutdown: Shutdown,
    /// The client that named itself (`client=`, and its `info=`), to be made a member of the
    /// topic for as long as its polls keep coming, with the request's grant.
    member: Option<(String, Option<serde_json::Value>, Option<crate::Grant>)>,
    /// What it needs to be answered by its topic's task, if it waits at the topic's end.
    seating: Option<Seating>,
}

impl Asked {
    fn read(
        config: &PageConfig,
        hold: Option<&Hold>,
        presences: &Presences,
        req: &HttpRequest,
        params: &Params,
    ) -> Result<Self, Error> {
        let request = PageRequest::parse(req, params, config)?;
        let ordered = request.query.contains_key("order");
        let wait = match hold {
            Some(hold) if !ordered => wait(&request.query, hold.max_wait)?,
            _ => None,
        };
        // A newest-first page is answered at once, and makes no member.
        let member = match ordered {
            true => None,
            false => presences
                .polled(&request.query)?
                .map(|(client, info)| (client, info, crate::Grant::of(req).cloned())),
        };
        // A poll that may wait, and be answered with a page (not a `304`), may take a seat.
        let seating = match wait {
            Some(wait) if !wait.is_zero() && request.if_none_match.is_none() => Seating::of(req),
            _ => None,
        };
        Ok(Self { request, wait, shutdown: Shutdown::of(req), member, seating })
    }

    async fn answer(
        &self,
        answering: Answering<'_>,
        plain_meter: &DeliveryMeter,
        presences: &Presences,
    ) -> HandlerResult {
        let Answering { broker, config, hold, pages, tasks } = answering;
        let request = &self.request;
        if let Some(order) = request.query.get("order") {
            return Box::pin(newest_first(broker, config, plain_meter, request, order)).await;
        }
        // A poll that names its client makes (or keeps) it a member while its polls keep coming.
        let mut _poll_end = None;
        if let Some((client, info, grant)) = &self.member {
            let held = self.wait.unwrap_or_default();
            let joining =
                presences.join_polled(&request.topic, grant.as_ref(), client, info.clone(), held);
            _poll_end = Box::pin(joining).await?;
        }
        let (mut page, meter) = match (self.wait, hold) {
            (Some(wait), Some(hold)) if !wait.is_zero() => {
                let seating = tasks.as_deref().zip(self.seating.as_ref());
                let holding = Holding { hold, wait, shutdown: self.shutdown.clone(), seating };
                match held(broker, config, request, holding).await? {
                    Some(page) => (page, &hold.meter),
                    // Its topic's task wrote the answer: the serve loop writes none.
                    None => return Ok(Response::new(crate::response::empty())),
                }
            }
            _ => (fetch(broker, request, request.cursor).await?, plain_meter),
        };
        trim_to_bytes(&mut page, config.max_page_bytes);
        meter.page(&page);
        let mut response = answer_page(page, request, config, Some(pages));
        meter.bytes(http_body::Body::size_hint(response.body()).exact().unwrap_or(0) as usize);
        if let Some(wait) = self.wait {
            response.headers_mut().insert(WAIT, HeaderValue::from(wait.as_millis() as u64));
        }
        Ok(response)
    }
}

/// `order=desc`: a page newest first, back from `before` (default `latest`).
async fn newest_first(
    broker: &dyn Broker,
    config: &PageConfig,
    meter: &DeliveryMeter,
    request: &PageRequest,
    order: &str,
) -> HandlerResult {
    match order {
        "desc" => {}
        "asc" => {
            return Err(Error::bad_request(
                "order=asc is the default: leave it out (and page forward with after=)",
            ));
        }
        other => {
            return Err(Error::bad_request(format!("order {other:?}: expected \"desc\"")));
        }
    }
    for refused in ["after", "wait"] {
        if request.query.contains_key(refused) {
            return Err(Error::bad_request(format!(
                "{refused}= does not go with order=desc, which pages back from before="
            )));
        }
    }
    let before = match request.query.get("before") {
        Some(text) => text.parse()?,
        None => Cursor::Latest,
    };
    let mut page = broker
        .fetch_newest_first(&request.topic, before, request.limit)
        .await
        .inspect_err(|e| metrics::broker_error("fetch", e))?;
    // Past `max_page_bytes`, the page ends early; it goes on back from the last one kept (a
    // retention gap, at the old end, comes with the page that reaches it).
    let mut total = 0usize;
    if let Some(over) = page.messages.iter().position(|m| {
        total += m.payload.len();
        total > config.max_page_bytes
    }) {
        let keep = over.max(1);
        if keep < page.messages.len() {
            page.messages.truncate(keep);
            let oldest = &page.messages[keep - 1];
            page.next = Cursor::After(oldest.epoch, pushpull_core::Offset(oldest.offset.0 - 1));
            page.gap = page.gap.filter(|g| g.reason != pushpull_core::GapReason::Retention);
        }
    }
    meter.page(&page);
    let response = page_response(page, request, config);
    meter.bytes(http_body::Body::size_hint(response.body()).exact().unwrap_or(0) as usize);
    Ok(response)
}

/// The page after `cursor`, from the broker.
async fn fetch(broker: &dyn Broker, request: &PageRequest, cursor: Cursor) -> Result<Page, Error> {
    broker
        .fetch(&request.topic, cursor, request.limit)
        .await
        .inspect_err(|e| metrics::broker_error("fetch", e))
}

/// How a poll is held: the route's hold, the wait applied, the server's shutdown, and the
/// topic tasks with what the poll needs to take a seat, if it may.
struct Holding<'a> {
    hold: &'a Hold,
    wait: Duration,
    shutdown: Shutdown,
    seating: Option<(&'a HeldPolls, &'a Seating)>,
}

/// A held poll: a subscription from the request's cursor answers with the messages it has
/// ready (those already there come at once), or waits for the first, the wait, or shutdown.
/// The page comes from the subscription, not from a read of the broker per poll (with Redis,
/// a subscription at the tail reads the node's window of the topic); a gap at the start is
/// answered by a fetch, whose page says what was missed. A poll that waits at the topic's end
/// takes a seat with the topic's task when it can: `None` when the task answered it.
async fn held(
    broker: &dyn Broker,
    config: &PageConfig,
    request: &PageRequest,
    holding: Holding<'_>,
) -> Result<Option<Page>, Error> {
    let Holding { hold, wait, mut shutdown, seating } = holding;
    let subscribe = |cursor| async move {
        broker
            .subscribe(&request.topic, cursor)
            .await
            .inspect_err(|e| metrics::broker_error("subscribe", e))
    };
    let mut next = subscribe(request.cursor).await?;
    let mut start = next.cursor();
    if !matches!(start, Cursor::After(..)) {
        // A start the broker did not resolve (no message yet, or a broker of one's own): the
        // page first, and then its end is where the poll waits, so an empty answer's `next`
        // never asks for `latest` again.
        let page = fetch(broker, request, request.cursor).await?;
        if !page.is_empty() {
            return Ok(Some(page));
        }
        next = subscribe(page.next).await?;
        start = page.next;
    }
    let empty = || Some(Page { gap: None, messages: Vec::new(), next: start });
    let first = match next.next().now_or_never() {
        Some(first) => first,
        None => {
            let mut seat = match seating {
                Some((tasks, seating)) => {
                    let gzip = config.gzip && request.accepts_gzip;
                    let (topic, limit) = (&request.topic, request.limit);
                    let asking = held::Asking { topic, cursor: start, limit, gzip, wait };
                    Box::pin(tasks.join(asking, seating)).await
                }
                None => None,
            };
            // Counted once seated (or not): a seat's count ends when its task answers it.
            let mut counted = None;
            match &seat {
                Some(seat) => seat.count(hold.held.hold()),
                None => counted = Some(hold.held.hold()),
            }
            let waited = tokio::time::sleep(wait);
            let mut waited = std::pin::pin!(waited);
            let first = loop {
                // Seated, the poll waits for its topic's task, and its subscription is left
                // unpolled: a publish wakes the task, not the poll.
                tokio::select! {
                    biased;
                    outcome = held::outcome(seat.as_ref()) => match outcome {
                        held::Outcome::Answered => return Ok(None),
                        // Answered here after all, from the subscription.
                        held::Outcome::LetGo => {
                            seat = None;
                            counted = Some(hold.held.hold());
                        }
                    },
                    first = next.next(), if seat.is_none() => break first,
                    () = &mut waited => return Ok(empty()),
                    () = shutdown.wait() => return Ok(empty()),
                }
            };
            // Held until the message came.
            drop(counted);
            first
        }
    };
    match first {
        Some(Ok(Delivery::Message(message))) => {
            let mut messages = vec![message];
            while messages.len() < request.limit {
                match next.next().now_or_never() {
                    Some(Some(Ok(Delivery::Message(message)))) => messages.push(message),
                    // Anything else (a gap, an error) is for the next poll, which asks from
                    // where this page ends.
                    _ => break,
                }
            }
            let next = messages.last().map_or(start, Message::cursor);
            Ok(Some(Page { gap: None, messages, next }))
        }
        Some(Ok(_)) => fetch(broker, request, start).await.map(Some),
        Some(Err(error)) => {
            metrics::broker_error("subscribe", &error);
            Err(error)
        }
        None => Ok(empty()),
    }
}

/// The `wait` query parameter: decimal seconds, cut to `max`; `None` when absent.
fn wait(query: &HashMap<String, String>, max: Duration) -> Result<Option<Duration>, Error> {
    let Some(text) = query.get("wait") else { return Ok(None) };
    let seconds: f64 =
        text.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).ok_or_else(|| {
            Error::bad_request(format!("wait {text:?} is not a number of seconds"))
        })?;
    Ok(Some(Duration::from_secs_f64(seconds.min(max.as_secs_f64()))))
}

/// What a page request asks for.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// The topic.
    pub topic: Topic,
    /// Where the page starts.
    pub cursor: Cursor,
    /// At most this many messages.
    pub limit: usize,
    /// The `If-None-Match` header, if any.
    pub if_none_match: Option<String>,
    /// Every query parameter.
    pub query: HashMap<String, String>,
    /// Whether the client takes gzip (`Accept-Encoding`).
    pub accepts_gzip: bool,
}

impl PageRequest {
    /// Reads topic, cursor (`after` or `Pushpull-Cursor`, default `beginning`), limit,
    /// `If-None-Match` and whether `Accept-Encoding` takes gzip.
    pub fn parse(req: &HttpRequest, params: &Params, config: &PageConfig) -> Result<Self, Error> {
        let topic = request::topic(params)?;
        let query = query_params(req);
        let cursor = request::cursor(req, &query, Cursor::Beginning)?;
        let limit = request::limit(&query, config.default_limit, config.max_limit)?;
        let if_none_match = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let accepts_gzip = crate::gzip::accepts_gzip(req.headers());
        Ok(Self { topic, cursor, limit, if_none_match, query, accepts_gzip })
    }
}

/// The answer for `page`: the JSON page or a 304, with `ETag`, `Cache-Control` and the hint.
/// A page is gzip-compressed when the client takes it and the config allows; the `ETag` of an
/// answer that may be compressed (a 304's too, which must name what a 200 would) is weak: the
/// compressed bytes are another representation of the same page (RFC 9110, 8.8.1).
pub fn page_response(page: Page, request: &PageRequest, config: &PageConfig) -> Response<Body> {
    answer_page(page, request, config, None)
}

/// [`page_response`], its body from `shared` when one is given.
fn answer_page(
    page: Page,
    request: &PageRequest,
    config: &PageConfig,
    shared: Option<&SharedPages>,
) -> Response<Body> {
    let (topic, if_none_match) = (&request.topic, request.if_none_match.as_deref());
    answer_of(page, topic, if_none_match, request.accepts_gzip, config, shared)
}

/// The answer for `page` of `topic` to a request with `if_none_match` that takes gzip or not:
/// [`answer_page`]'s, and what a held poll's topic task answers with.
pub(super) fn answer_of(
    mut page: Page,
    topic: &Topic,
    if_none_match: Option<&str>,
    accepts_gzip: bool,
    config: &PageConfig,
    shared: Option<&SharedPages>,
) -> Response<Body> {
    trim_to_bytes(&mut page, config.max_page_bytes);
    let tag = etag(&page);
    let not_modified = if_none_match.is_some_and(|v| if_none_match_matches(v, &tag));
    let mut response = if not_modified {
        let mut response = Response::new(crate::response::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let gzip = config.gzip && accepts_gzip;
        let (body, compressed) = match shared {
            Some(shared) => shared.body(topic, &page, gzip, config.gzip_min_bytes),
            None => encoded(&page, gzip, config.gzip_min_bytes),
        };
        page_body(body, compressed, config)
    };
    let headers = response.headers_mut();
    if config.gzip {
        // A 304 names what a 200 would vary by, too.
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let tag = if config.gzip && accepts_gzip { format!("W/{tag}") } else { tag };
    headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("cursors are header-safe"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(POLL_INTERVAL, HeaderValue::from(config.poll_interval.as_millis() as u64));
    response
}

/// A 200 answer of the JSON page `body`: gzip-compressed when the client takes it and the page
/// is long enough.
fn page_json(body: Vec<u8>, accepts_gzip: bool, config: &PageConfig) -> Response<Body> {
    let (body, compressed) =
        plain_or_gzip(body, config.gzip && accepts_gzip, config.gzip_min_bytes);
    page_body(body, compressed, config)
}

/// A 200 answer of a JSON page's `body`, `compressed` with gzip or not. While the config
/// compresses, the answer says it varies by `Accept-Encoding`, so a cache in between keeps each
/// form apart.
fn page_body(body: bytes::Bytes, compress: bool, config: &PageConfig) -> Response<Body> {
    let mut response = json(StatusCode::OK, body);
    let headers = response.headers_mut();
    if config.gzip {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if compress {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(crate::gzip::GZIP));
    }
    response
}

/// Cuts the page after the message that takes it past `max_bytes` of payload (keeping one).
pub(super) fn trim_to_bytes(page: &mut Page, max_bytes: usize) {
    let mut total = 0usize;
    let keep = page
        .messages
        .iter()
        .position(|m| {
            total += m.payload.len();
            total > max_bytes
        })
        .map_or(page.messages.len(), |over| over.max(1));
    if keep < page.messages.len() {
        page.messages.truncate(keep);
        page.next = page.messages[keep - 1].cursor();
    }
}

/// `GET /v1/messages?topic=A&topic=B&topic=PREFIX*&after=SET&limit=N[&wait=SECONDS]`: a page of
/// many topics (see [`follow_request`](crate::request::follow_request) for the topics and
/// starts), `{"gaps":[…],"messages":[…],"next":"@…"}`: each topic's gap and messages in its
/// order (the topics interleaved), and `next`, the cursor set to ask from next time. With
/// `hold` and `wait`, an empty page is held until one of the topics gets a message (a topic a
/// prefix selects, created meanwhile, included) or the wait passes.
pub fn many_page_route(context: &Context, hold: Option<Hold>) -> Route {
    let shared = Arc::new((
        context.broker.clone(),
        context.pages.clone(),
        hold,
        DeliveryMeter::new(context.page_transport),
        context.max_topics,
        context.presences(),
    ));
    let holds = shared.2.is_some();
    let route = Route::new(Method::GET, MANY_MESSAGES_PATH, move |req: HttpRequest, _: Params| {
        let shared = shared.clone();
        async move {
            let (broker, config, hold, meter, max_topics, presences) = &*shared;
            let many = Many { config, hold: hold.as_ref(), plain_meter: meter, presences };
            answer_many(broker.clone(), many, *max_topics, req).await
        }
    });
    if holds { route.long_lived() } else { route }
}

/// The many-topics page route's settings.
struct Many<'a> {
    config: &'a PageConfig,
    hold: Option<&'a Hold>,
    plain_meter: &'a DeliveryMeter,
    presences: &'a Presences,
}

async fn answer_many(
    broker: Arc<dyn Broker>,
    many: Many<'_>,
    max_topics: usize,
    req: HttpRequest,
) -> HandlerResult {
    let Many { config, hold, plain_meter, presences } = many;
    let query = query_params(&req);
    let limit = request::limit(&query, config.default_limit, config.max_limit)?;
    let resume = request::resume_text(&req)?;
    let (follow, keys) =
        request::follow_request(&req, resume.as_deref(), Cursor::Beginning, max_topics)?;
    let wait = match hold {
        Some(hold) => wait(&query, hold.max_wait)?,
        None => None,
    };
    // A poll that names its client is a member of each topic it names (not of prefixes).
    let mut _poll_ends = Vec::new();
    if let Some((client, info)) = presences.polled(&query)? {
        let grant = crate::Grant::of(&req);
        let held = wait.unwrap_or_default();
        for topic in follow.named_topics() {
            _poll_ends
                .extend(presences.join_polled(topic, grant, &client, info.clone(), held).await?);
        }
    }
    // The page is read by fetching each topic from its start, on any broker; only a page that
    // has to wait subscribes.
    let starts =
        follow.starts(&*broker).await.inspect_err(|e| metrics::broker_error("fetch", e))?;
    let mut cursors = pushpull_core::CursorSet::new();
    for (topic, start) in starts {
        cursors.set(topic, start);
    }
    let mut page = ManyPage::default();
    page.fill(&*broker, &mut cursors, limit, config.max_page_bytes).await?;
    let mut meter = plain_meter;
    if let (Some(wait), Some(hold)) = (wait, hold) {
        if !wait.is_zero() {
            meter = &hold.meter;
        }
        if page.is_empty() && !wait.is_zero() {
            let _held = hold.held.hold();
            let mut shutdown = Shutdown::of(&req);
            // From where the page left every topic (a prefix's topic new since, from its first).
            let client: Arc<dyn pushpull_core::Client> = broker.clone();
            let from_here = FollowRequest { resume: Some(cursors.clone()), ..follow };
            let mut following = pushpull_core::follow(client, from_here)
                .await
                .inspect_err(|e| metrics::broker_error("subscribe", e))?;
            let first = tokio::select! {
                first = following.next() => first,
                () = tokio::time::sleep(wait) => None,
                () = shutdown.wait() => None,
            };
            match first {
                Some(Ok(delivery)) => {
                    // A topic new since the page was read comes in with its first delivery.
                    if cursors.get(delivery.topic()).is_none() {
                        page.push(&delivery);
                        cursors.advance(&delivery);
                    }
                    page.fill(&*broker, &mut cursors, limit, config.max_page_bytes).await?;
                }
                Some(Err(error)) => {
                    metrics::broker_error("subscribe", &error);
                    return Err(error);
                }
                None => {}
            }
        }
    }
    for message in &page.messages {
        meter.delivered(&pushpull_core::Delivery::Message(message.clone()));
    }
    let body = serde_json::json!({
        "gaps": page.gaps.iter().map(crate::wire::GapJson::from_gap).collect::<Vec<_>>(),
        "messages": page.messages.iter().map(crate::wire::MessageJson::from_message).collect::<Vec<_>>(),
        "next": keys.encode(&cursors),
    });
    let bytes = serde_json::to_vec(&body).expect("a page encodes");
    let mut response = page_json(bytes, crate::gzip::accepts_gzip(req.headers()), config);
    meter.bytes(http_body::Body::size_hint(response.body()).exact().unwrap_or(0) as usize);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(POLL_INTERVAL, HeaderValue::from(config.poll_interval.as_millis() as u64));
    if let Some(wait) = wait {
        headers.insert(WAIT, HeaderValue::from(wait.as_millis() as u64));
    }
    Ok(response)
}

/// A page of many topics.
#[derive(Default)]
struct ManyPage {
    gaps: Vec<pushpull_core::Gap>,
    messages: Vec<pushpull_core::Message>,
    bytes: usize,
}

impl ManyPage {
    fn is_empty(&self) -> bool {
        self.gaps.is_empty() && self.messages.is_empty()
    }

    fn push(&mut self, delivery: &pushpull_core::Delivery) {
        match delivery {
            pushpull_core::Delivery::Message(message) => {
                self.bytes += message.payload.len();
                self.messages.push(message.clone());
            }
            pushpull_core::Delivery::Gap(gap) => self.gaps.push(gap.clone()),
        }
    }

    /// Reads each topic from its cursor, a fair share of `limit` each (at least one), until
    /// `limit` messages or `max_bytes` of payload; moves the cursors past what it read, and
    /// resolves every start (`latest`, `last:N`, …) to a position, read or not, so that the
    /// set it leaves resumes exactly.
    async fn fill(
        &mut self,
        broker: &dyn Broker,
        cursors: &mut pushpull_core::CursorSet,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(), Error> {
        let topics: Vec<(Topic, Cursor)> = cursors.iter().map(|(t, c)| (t.clone(), c)).collect();
        let share = (limit / topics.len().max(1)).max(1);
        for (topic, cursor) in topics {
            let room = limit.saturating_sub(self.messages.len());
            let full = room == 0 || (self.bytes >= max_bytes && !self.messages.is_empty());
            if full && cursor.is_position() {
                continue;
            }
            let page = broker
                .fetch(&topic, cursor, share.min(room).max(1))
                .await
                .inspect_err(|e| metrics::broker_error("fetch", e))?;
            // A start (`latest`, `last:N`, …) resolved: the position before the page's first
            // delivery, or where an empty page ends.
            let next = page.next;
            let mut deliveries = page.into_deliveries().peekable();
            if !cursor.is_position() {
                let before = deliveries.peek().and_then(pushpull_core::Delivery::before);
                cursors.set(topic.clone(), before.unwrap_or(next));
            }
            if full {
                continue;
            }
            for delivery in deliveries {
                if self.bytes >= max_bytes && !self.messages.is_empty() {
                    break;
                }
                self.push(&delivery);
                cursors.advance(&delivery);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Epoch, Gap, GapReason, Offset, Publication};

    fn page(topic: &Topic, epoch: Epoch, offsets: std::ops::RangeInclusive<u64>) -> Page {
        let messages: Vec<Message> = offsets
            .map(|n| {
                let payload = format!(
                    "{{\"n\":{n},\"kind\":\"update\",\"padding\":\"{}\"}}",
                    "x".repeat(200)
                );
                Publication::new(payload).into_message(topic.clone(), epoch, Offset(n))
            })
            .collect();
        let next = messages.last().expect("a message").cursor();
        Page { gap: None, messages, next }
    }

    #[test]
    fn the_polls_one_message_wakes_share_its_page() {
        let shared = SharedPages::default();
        let topic = Topic::new("orders").unwrap();
        let epoch = Epoch::random();
        let one = page(&topic, epoch, 1..=1);
        let (first, compressed) = shared.body(&topic, &one, false, 1024);
        assert!(!compressed);
        assert_eq!(first, crate::wire::encode_page(&one), "the page's own JSON");
        let (again, _) = shared.body(&topic, &one.clone(), false, 1024);
        assert_eq!(again.as_ptr(), first.as_ptr(), "the same bytes, not made again");

        // A client that takes gzip: compressed once, then shared too; the JSON stays.
        let (gzip, compressed) = shared.body(&topic, &one, true, 64);
        assert!(compressed);
        assert_eq!(crate::gzip::inflate(&gzip, 1 << 20).unwrap(), first);
        assert_eq!(shared.body(&topic, &one, true, 64).0.as_ptr(), gzip.as_ptr());
        assert_eq!(shared.body(&topic, &one, false, 64).0.as_ptr(), first.as_ptr());

        // The next message makes the next page; a page of both is another page again.
        let two = page(&topic, epoch, 2..=2);
        let (second, _) = shared.body(&topic, &two, false, 1024);
        assert_eq!(second, crate::wire::encode_page(&two));
        let both = page(&topic, epoch, 1..=2);
        assert_eq!(shared.body(&topic, &both, false, 1024).0, crate::wire::encode_page(&both));
        // Another epoch's page at the same offsets is not this one.
        let other = page(&topic, Epoch::random(), 1..=2);
        assert_eq!(shared.body(&topic, &other, false, 1024).0, crate::wire::encode_page(&other));
    }

    #[test]
    fn a_page_with_a_gap_or_none_is_made_each_time_and_the_table_stays_bounded() {
        let shared = SharedPages::default();
        let topic = Topic::new("orders").unwrap();
        let epoch = Epoch::random();
        let mut gapped = page(&topic, epoch, 5..=6);
        gapped.gap = Some(Gap {
            topic: topic.clone(),
            reason: GapReason::Retention,
            missed: None,
            cursor: Cursor::After(epoch, Offset(4)),
        });
        let (first, _) = shared.body(&topic, &gapped, false, 1024);
        assert_eq!(first, crate::wire::encode_page(&gapped));
        assert_ne!(shared.body(&topic, &gapped, false, 1024).0.as_ptr(), first.as_ptr());
        let empty = Page { gap: None, messages: Vec::new(), next: Cursor::After(epoch, Offset(6)) };
        assert_eq!(shared.body(&topic, &empty, false, 1024).0, crate::wire::encode_page(&empty));
        assert!(shared.0.lock().unwrap().is_empty(), "nothing kept for either");

        for n in 0..SHARED_TOPICS + 10 {
            let topic = Topic::new(format!("t{n}")).unwrap();
            shared.body(&topic, &page(&topic, epoch, 1..=1), false, 1024);
            assert!(shared.0.lock().unwrap().len() <= SHARED_TOPICS);
        }
    }
}
