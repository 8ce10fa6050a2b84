//! Held polls answered by one task per topic.
//!
//! A publish to a topic that a thousand long polls wait at would otherwise wake a thousand
//! connection tasks, each to read the message from its subscription, make the same page's
//! answer (body, validators, head) and write it. Here a poll that waits at the topic's end, on
//! a connection whose answers the serve loop writes itself, takes a seat with the topic's task
//! instead: the task reads each new message once, makes each answer once (per page size and
//! encoding), writes it to every seated poll's socket, and wakes no connection. A connection's
//! task next runs when its client sends the next request, or its poll's wait ends, and then
//! finds its poll answered: the serve loop writes nothing for it (see `takeover::answer`).
//!
//! A poll whose socket does not take the answer at once, or that waits where the task is not
//! (behind or ahead of it, or when the topic's stream has a gap or fails), is let go: its own
//! task answers it from its subscription, as without seats. A seat is one poll's: answered,
//! let go or dropped (the client went away, the wait passed), it is gone.

use std::future::Future;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use pushpull_core::{Broker, Cursor, Delivery, Epoch, Message, Offset, Page, Subscription, Topic};

use super::config::PageConfig;
use crate::fanout::{Gate, Offered, Tasks, Wanted, gather};
use crate::gauge::Held;
use crate::metrics::DeliveryMeter;
use crate::router::{Decoration, HttpRequest};
use crate::takeover;

/// The most messages one answer is made of (what is ready together when the task wakes).
const BATCH: usize = 64;
/// How long a topic's task waits with no poll seated before it ends.
const IDLE: Duration = Duration::from_secs(30);

/// A page route's topic tasks for held polls. See the [module](self).
pub(super) struct HeldPolls {
    broker: Arc<dyn Broker>,
    config: PageConfig,
    meter: DeliveryMeter,
    /// Counts the polls answered by topic tasks.
    answered: Arc<AtomicU64>,
    tasks: Tasks<Topic, Waiting>,
    this: Weak<Self>,
}

/// One topic's task: the polls seated at its end.
struct Waiting {
    topic: Topic,
    state: Mutex<State>,
    /// Wakes the task to forget polls that left.
    look: tokio::sync::Notify,
}

struct State {
    epoch: Epoch,
    /// The offset of the last message the task handled: its seated polls wait after it.
    offset: u64,
    polls: Vec<Arc<Seated>>,
    ended: bool,
}

/// Where a seated poll stands.
const WAITING: u8 = 0;
const ANSWERED: u8 = 1;
const LET_GO: u8 = 2;

/// A seated poll.
struct Seated {
    gate: Arc<Gate>,
    limit: usize,
    gzip: bool,
    /// The wait applied, in milliseconds (its answer's `Pushpull-Wait-Ms`).
    wait: u64,
    /// Its answer's other fields, as they are written (see [`Seating`]).
    fields: Option<Arc<[u8]>>,
    /// Its connection closes after the answer.
    close: bool,
    /// [`WAITING`], [`ANSWERED`] or [`LET_GO`].
    stands: AtomicU8,
    /// Its seat was dropped: nothing is written for it (set under its gate's lock).
    left: AtomicBool,
    /// Counts it among the requests held, until the task answers it or lets it go.
    counted: Mutex<Option<Held>>,
}

impl Seated {
    /// Writes into `own` (emptied first) its answer's own fields (its wait, and the router's
    /// fields and `Connection: close` if it has them) and the blank line after them.
    fn own_fields(&self, own: &mut BytesMut) {
        own.clear();
        let wait = self.wait;
        let _ = std::fmt::Write::write_fmt(
            own,
            format_args!("{}: {wait}\r\n", super::wire::WAIT_HEADER),
        );
        if let Some(fields) = &self.fields {
            own.put_slice(fields);
        }
        own.put_slice(b"\r\n");
    }

    /// It is answered or let go: no longer counted as held.
    fn done(&self, stands: u8) {
        let mut counted = self.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.stands.store(stands, Ordering::Release);
        drop(counted.take());
    }
}

/// A held poll's place with its topic's task; dropping it leaves.
pub(super) struct Seat {
    waiting: Arc<Waiting>,
    seated: Arc<Seated>,
}

/// How a seat ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The task wrote the poll's answer.
    Answered,
    /// The task let it go: the poll answers itself.
    LetGo,
}

/// Waits for the task to answer the poll of `seat` or let it go; forever without a seat.
pub(super) fn outcome(seat: Option<&Seat>) -> impl Future<Output = Outcome> + '_ {
    std::future::poll_fn(move |cx| match seat {
        Some(seat) => seat.poll_outcome(cx),
        None => Poll::Pending,
    })
}

impl Seat {
    /// Counts the poll among the held requests with `counted` until its task answers it or
    /// lets it go (or the seat is dropped).
    pub(super) fn count(&self, counted: Held) {
        let mut slot =
            self.seated.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.seated.stands.load(Ordering::Acquire) == WAITING {
            *slot = Some(counted);
        }
    }

    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        loop {
            // The gate says so in the lock the answer's write held: an answer written only in
            // part (the rest pending in the gate) wakes the connection to write the rest.
            if self.seated.gate.answered() {
                return Poll::Ready(Outcome::Answered);
            }
            if self.seated.stands.load(Ordering::Acquire) == LET_GO {
                return Poll::Ready(Outcome::LetGo);
            }
            std::task::ready!(self.seated.gate.poll_attention(cx));
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.seated.gate.leave(&self.seated.left);
        if self.seated.stands.load(Ordering::Acquire) == WAITING {
            self.waiting.look.notify_one();
        }
    }
}

/// What a held poll needs to take a seat: its connection's gate, and the fields its answer
/// has besides those of its page and its wait: the router's (CORS), and `Connection: close` if
/// its request said so. `None` for a request the serve loop does not answer itself, or whose
/// answer the router does more to than add fields.
pub(super) struct Seating {
    gate: Arc<Gate>,
    /// Those fields, as they are written: none, mostly.
    fields: Option<Arc<[u8]>>,
}

/// The field that closes a connection after its answer, as it is written.
const CLOSE: &[u8] = b"connection: close\r\n";

impl Seating {
    pub(super) fn of(request: &HttpRequest) -> Option<Self> {
        let decoration = request.extensions().get::<Decoration>()?;
        let gate = Gate::answered_here(request)?;
        let close = takeover::wants_close(request);
        let fields = (!decoration.0.is_empty() || close).then(|| {
            let mut fields = BytesMut::new();
            for (name, value) in &decoration.0 {
                takeover::field(&mut fields, name.as_str(), value.as_bytes());
            }
            if close {
                fields.put_slice(CLOSE);
            }
            Arc::from(&fields[..])
        });
        Some(Self { gate, fields })
    }

    /// Whether the connection closes after the answer.
    fn closes(&self) -> bool {
        self.fields.as_deref().is_some_and(|fields| fields.ends_with(CLOSE))
    }
}

/// What a poll asks for, as a seat needs it.
pub(super) struct Asking<'a> {
    pub(super) topic: &'a Topic,
    /// Where it waits: its subscription's start.
    pub(super) cursor: Cursor,
    pub(super) limit: usize,
    pub(super) gzip: bool,
    /// The wait applied.
    pub(super) wait: Duration,
}

impl HeldPolls {
    pub(super) fn new(
        broker: Arc<dyn Broker>,
        config: PageConfig,
        meter: DeliveryMeter,
        answered: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            broker,
            config,
            meter,
            answered,
            tasks: Tasks::new(),
            this: this.clone(),
        })
    }

    /// Seats the poll `asking` with its topic's task. `None` when it cannot be seated now: the
    /// broker's subscriptions cannot be left unpolled, the task is elsewhere in the topic, or
    /// this is the first connection to want one.
    pub(super) async fn join(&self, asking: Asking<'_>, seating: &Seating) -> Option<Seat> {
        let Cursor::After(epoch, Offset(offset)) = asking.cursor else { return None };
        if !self.broker.parks() || seating.gate.resting() {
            return None;
        }
        let seated = || {
            Arc::new(Seated {
                gate: seating.gate.clone(),
                limit: asking.limit,
                gzip: asking.gzip,
                wait: asking.wait.as_millis() as u64,
                fields: seating.fields.clone(),
                close: seating.closes(),
                stands: AtomicU8::new(WAITING),
                left: AtomicBool::new(false),
                counted: Mutex::new(None),
            })
        };
        match self.tasks.want(asking.topic, &seating.gate, |task| task.seat(epoch, offset, seated))
        {
            Wanted::Seated(seat) => return seat,
            Wanted::First => return None,
            Wanted::Start => {}
        }
        let subscription = match self.broker.relay(asking.topic, asking.cursor).await {
            Ok(subscription) => subscription,
            Err(error) => {
                let topic = asking.topic;
                tracing::debug!(%error, %topic, "held polls answer themselves: no subscription");
                return None;
            }
        };
        let made = self.tasks.install(asking.topic.clone(), || {
            Arc::new(Waiting {
                topic: asking.topic.clone(),
                state: Mutex::new(State { epoch, offset, polls: Vec::new(), ended: false }),
                look: tokio::sync::Notify::new(),
            })
        });
        match made {
            Ok(waiting) => {
                let seat = waiting.seat(epoch, offset, seated).flatten();
                tokio::spawn(run(self.this.clone(), waiting, subscription));
                seat
            }
            // Another poll made it meanwhile.
            Err(waiting) => waiting.seat(epoch, offset, seated).flatten(),
        }
    }

    /// Ends `waiting` if it has no poll seated, and forgets it; whether it ended.
    fn end(&self, waiting: &Arc<Waiting>) -> bool {
        {
            let mut state = waiting.lock();
            state.polls.retain(|seated| !seated.left.load(Ordering::Acquire));
            if !state.polls.is_empty() {
                return false;
            }
            state.ended = true;
        }
        self.tasks.forget(&waiting.topic, waiting);
        true
    }

    /// Ends `waiting` whatever its polls: each is let go, to answer itself.
    fn end_all(&self, waiting: &Arc<Waiting>) {
        let polls = {
            let mut state = waiting.lock();
            state.ended = true;
            std::mem::take(&mut state.polls)
        };
        for seated in polls {
            seated.done(LET_GO);
            seated.gate.call();
        }
        self.tasks.forget(&waiting.topic, waiting);
    }

    /// Answers the polls seated at `waiting` with `batch`, the messages after its offset (in
    /// order): each poll gets the first of them, as many as it asked for, in one write.
    fn answer(&self, waiting: &Waiting, batch: &[Delivery]) {
        let Some(Delivery::Message(last)) = batch.last() else { return };
        let polls = {
            let mut state = waiting.lock();
            state.offset = last.offset.0;
            // As many will most likely wait for the next message.
            let room = Vec::with_capacity(state.polls.len());
            std::mem::replace(&mut state.polls, room)
        };
        // Each answer made once: (messages asked for, gzip) and what it is.
        let mut made: Vec<(usize, bool, Option<Made>)> = Vec::new();
        let (mut deliveries, mut bytes, mut most, mut answered) = (0u64, 0u64, 0usize, 0u64);
        // Each poll's own fields, made in turn.
        let mut own = BytesMut::with_capacity(256);
        for seated in polls {
            if seated.left.load(Ordering::Acquire) {
                continue;
            }
            let asked = seated.limit.min(batch.len());
            let key = |(count, gzip, _): &&(usize, bool, Option<Made>)| {
                *count == asked && *gzip == seated.gzip
            };
            let answer = match made.iter().find(key) {
                Some((_, _, answer)) => answer.as_ref(),
                None => {
                    let answer = self.make(&waiting.topic, &batch[..asked], seated.gzip);
                    made.push((asked, seated.gzip, answer));
                    made.last().and_then(|(_, _, answer)| answer.as_ref())
                }
            };
            let Some(answer) = answer else {
                // Not one a task can write (it never happens with a page): answered by its own.
                seated.done(LET_GO);
                seated.gate.call();
                continue;
            };
            seated.own_fields(&mut own);
            let frames =
                [IoSlice::new(&answer.head), IoSlice::new(&own), IoSlice::new(&answer.body)];
            let total = answer.head.len() + own.len() + answer.body.len();
            match seated.gate.offer(&frames, total, &seated.left, true) {
                Offered::Written | Offered::Partly => {
                    seated.done(ANSWERED);
                    if seated.close {
                        // The connection closes after this answer: its task is woken to close
                        // it (any other waits for its client's next request).
                        seated.gate.call();
                    }
                    answered += 1;
                    deliveries += answer.messages as u64;
                    bytes += total as u64;
                    most = most.max(answer.messages);
                }
                Offered::Refused => {
                    seated.done(LET_GO);
                    seated.gate.call();
                }
                Offered::Left => {}
            }
        }
        if answered > 0 {
            self.answered.fetch_add(answered, Ordering::Relaxed);
            self.meter.fanned_out(batch[..most].iter(), deliveries, bytes);
        }
    }

    /// The answer to a poll of `topic` of the page of `messages`, gzip-compressed if `gzip`
    /// and the page is long enough: as the page route makes it.
    fn make(&self, topic: &Topic, messages: &[Delivery], gzip: bool) -> Option<Made> {
        let messages: Vec<Message> = messages
            .iter()
            .filter_map(|delivery| match delivery {
                Delivery::Message(message) => Some(message.clone()),
                Delivery::Gap(_) => None,
            })
            .collect();
        let next = messages.last()?.cursor();
        let mut page = Page { gap: None, messages, next };
        super::server::trim_to_bytes(&mut page, self.config.max_page_bytes);
        let count = page.messages.len();
        let response = super::server::answer_of(page, topic, None, gzip, &self.config, None);
        let (head, body) = takeover::fixed_head(response)?;
        Some(Made { head, body, messages: count })
    }
}

/// An answer made for the polls of a batch.
struct Made {
    /// Its head, but for each poll's own fields and the blank line.
    head: Bytes,
    body: Bytes,
    /// The messages in it.
    messages: usize,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seats the poll `seated` makes, which waits after `offset` of `epoch`: `None` when the
    /// task has ended, `Some(None)` when it is elsewhere in the topic.
    fn seat(
        self: &Arc<Self>,
        epoch: Epoch,
        offset: u64,
        seated: impl FnOnce() -> Arc<Seated>,
    ) -> Option<Option<Seat>> {
        let mut state = self.lock();
        if state.ended {
            return None;
        }
        if state.epoch != epoch || state.offset != offset {
            return Some(None);
        }
        let seated = seated();
        state.polls.push(seated.clone());
        Some(Some(Seat { waiting: self.clone(), seated }))
    }
}

/// A topic's task: reads the topic and answers the polls seated at its end with each batch
/// of messages, until no poll has been seated for [`IDLE`], the page route is gone, or the
/// topic's stream does something but deliver messages (its polls are then let go).
async fn run(polls: Weak<HeldPolls>, waiting: Arc<Waiting>, mut subscription: Subscription) {
    let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            item = subscription.next() => item,
            () = waiting.look.notified() => {
                waiting.lock().polls.retain(|seated| !seated.left.load(Ordering::Acquire));
                continue;
            }
            () = tokio::time::sleep(IDLE) => {
                match polls.upgrade() {
                    Some(polls) if !polls.end(&waiting) => continue,
                    _ => return,
                }
            }
        };
        // A gap or an error is each poll's own to meet, from its own subscription.
        let other = gather(first, &mut subscription, BATCH, |_, delivery| batch.push(delivery));
        let Some(held) = polls.upgrade() else { return };
        held.answer(&waiting, &batch);
        batch.clear();
        if other {
            held.end_all(&waiting);
            return;
        }
    }
}
