//! Fan-out per topic: one task per topic writes each new message to every caught-up
//! subscriber's socket, instead of every subscriber's task being woken to write its own.
//!
//! At moderate rates each subscriber of a busy topic gets one message per wake-up, so without
//! this every delivery is a task wake-up, a poll of the connection's whole state and a write.
//! With it, a publish wakes one task per topic, which writes the message's shared encoding to
//! each subscriber's socket at once where the socket has room; a connection's own task is
//! woken only when its socket is full, or the topic's stream did something other than deliver
//! (a gap, an error): it then takes its subscription back and carries on from where the
//! fan-out left it, as it would have on its own.
//!
//! The pieces:
//!
//! - [`Gate`]: a plain TCP connection's socket, shared by the connection's task and the
//!   fan-outs writing to it. Every byte either writes goes through the gate's lock, whole
//!   frames at a time, and bytes the socket did not take wait in the gate, ahead of anything
//!   written after them: the two writers' frames never interleave.
//! - [`FanOut`]: a server's topic fan-outs. A connection whose subscription has caught up
//!   [joins](FanOut::join) its topic's, at the subscription's cursor, and gets a [`Seat`]; the
//!   fan-out writes to it from the next message on. A topic gets a fan-out only once two
//!   connections want one: a topic read by one subscriber gains nothing from it.
//! - [`Seat`]: a connection's place in a fan-out. It says when the connection was let go, and
//!   the cursor to carry on from; dropping it leaves the fan-out.
//!
//! TLS connections have no gate (their bytes go through the connection's TLS state, which only
//! its task holds), and are served by their own task, as without fan-outs.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use pushpull_core::{Broker, Cursor, Delivery, Epoch, Message, Offset, Subscription, Topic};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::DeliveryMeter;

/// The most messages a fan-out writes in one go (one write per subscriber for all of them).
const BATCH: usize = 64;
/// How often a fan-out looks at how busy it is.
const WINDOW: std::time::Duration = std::time::Duration::from_millis(250);
/// How long the connections of a topic whose fan-out was busy writing more than four fifths
/// of the time write their own before they take seats again.
const COOL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a connection whose socket a fan-out found full writes its own before it may take a
/// seat again: a socket that fills is one whose reader is behind, or a topic busy enough that
/// each connection's task gathers several messages per write (which a fan-out writing each
/// message as it comes does not): under such load the connections serve themselves.
const REST: std::time::Duration = std::time::Duration::from_secs(1);

/// A plain TCP connection's socket, shared by its connection's reader and [`Gate`]s: what the
/// serve loop hands hyper for a plain connection, so that a transport taking the connection
/// over (a WebSocket upgrade) can write to the socket beside hyper's upgraded handle.
#[derive(Debug, Clone)]
pub(crate) struct SharedTcp(pub(crate) Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match try_read_drained(&self.0, buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale: it is cleared now, and the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_with(&self.0, cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_with(&self.0, cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shut_write(&self.0))
    }
}

/// Reads what `tcp` has into `buf`, as `TcpStream::try_read` does, and when the read came
/// short of filling `buf` (the socket's receive queue is drained) clears the socket's read
/// readiness, as tokio's own `AsyncRead` does: otherwise the next wait for readability would
/// return at once and the read after it would find nothing, one `recvfrom` of `EAGAIN` per
/// request. Readiness that arrives meanwhile is not lost (tokio clears only the readiness it
/// saw, never a close).
pub(crate) fn try_read_drained(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let room = buf.len();
    let mut short = None;
    let read = tcp.try_io(tokio::io::Interest::READABLE, || match tcp.try_read(buf)? {
        n if n > 0 && n < room => {
            short = Some(n);
            // Reported as would-block only to have the readiness cleared.
            Err(io::ErrorKind::WouldBlock.into())
        }
        n => Ok(n),
    });
    match short {
        Some(n) => Ok(n),
        None => read,
    }
}

/// Ends the sending half of `tcp` (a FIN), as a `TcpStream`'s own shutdown does.
fn shut_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        // Already closed by the peer: nothing left to end.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

fn poll_write_with(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match write(tcp) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    }
}

/// The request extension naming a plain HTTP/1.1 connection's socket: its gate, when the
/// serve loop answers the connection's requests itself, or the socket hyper serves.
#[derive(Clone, Debug)]
pub(crate) enum SocketOf {
    Gate(Arc<Gate>),
    Tcp(Arc<TcpStream>),
}

/// A connection's socket, written by its own task and by the [`FanOut`]s it joined. See the
/// [module](self).
#[derive(Debug)]
pub struct Gate {
    tcp: Arc<TcpStream>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Bytes accepted but not yet taken by the socket, whole frames from the start: written
    /// before anything else.
    pending: BytesMut,
    /// No more fan-out writes (the connection is closing).
    shut: bool,
    /// Something the connection's task must see: a fan-out let it go, or left bytes pending.
    attention: bool,
    waker: Option<Waker>,
    /// The connection's writer has written all it had and waits for more (only where the
    /// serve loop writes a response itself: see [`Gate::poll_idle`]).
    idle: bool,
    idle_waker: Option<Waker>,
    /// Until when the connection may not take a seat (a fan-out found its socket full).
    rest_until: Option<std::time::Instant>,
    /// A held poll's topic task wrote the answer to the request being answered (see
    /// [`Gate::take_answered`]).
    answered: bool,
    /// The client sent more while its request was held: the task that answers it wakes the
    /// connection.
    wake_on_answer: bool,
}

/// What a fan-out's offer came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Every byte was written.
    Written,
    /// Some were written, the rest wait in the gate for the connection's task to write: the
    /// member has them all, and is let go.
    Partly,
    /// Nothing was written: the socket is full, the gate has bytes waiting or is shut.
    Refused,
    /// Nothing was written: the member left.
    Left,
}

/// Accepted past this many pending bytes, a connection's own write waits for the socket.
const MAX_PENDING: usize = 64 * 1024;

impl Gate {
    /// The gate of the connection `request` came on, when it can have one: a plain (not TLS)
    /// HTTP/1.1 connection, served by [`serve_until`](crate::serve_until).
    pub fn of<B>(request: &http::Request<B>) -> Option<Arc<Self>> {
        if request.version() != http::Version::HTTP_11 {
            return None;
        }
        let extensions = request.extensions();
        let socket = extensions
            .get::<SocketOf>()
            .or_else(|| extensions.get::<Arc<crate::serve::Served>>()?.socket.as_ref())?;
        match socket {
            SocketOf::Gate(gate) => Some(gate.clone()),
            SocketOf::Tcp(tcp) => Some(Self::new(tcp.clone())),
        }
    }

    /// The gate of the connection `request` came on when the serve loop answers it itself
    /// (it writes the answer, and so knows when a held poll's answer was written by its
    /// topic's task instead): `None` for a request hyper serves.
    pub(crate) fn answered_here<B>(request: &http::Request<B>) -> Option<Arc<Self>> {
        match request.extensions().get::<Arc<crate::serve::Served>>()?.socket.as_ref()? {
            SocketOf::Gate(gate) => Some(gate.clone()),
            SocketOf::Tcp(_) => None,
        }
    }

    pub(crate) fn new(tcp: Arc<TcpStream>) -> Arc<Self> {
        Arc::new(Self { tcp, state: Mutex::default() })
    }

    /// Whether the request being answered was answered by a held poll's topic task.
    pub(crate) fn answered(&self) -> bool {
        self.lock().answered
    }

    /// Whether the request being answered was answered by a held poll's topic task, forgotten
    /// now: the serve loop asks before it writes an answer, and writes none if so (only what
    /// the task left pending).
    pub(crate) fn take_answered(&self) -> bool {
        let mut state = self.lock();
        state.wake_on_answer = false;
        std::mem::take(&mut state.answered)
    }

    /// A held poll's topic task that answers the request being answered wakes the connection
    /// (the client sent more meanwhile, to be answered next).
    pub(crate) fn wake_when_answered(&self) {
        self.lock().wake_on_answer = true;
    }

    /// Marks `left` (a seat's) under the gate's lock, which every write through the gate holds:
    /// once this returns, nothing more is written for that seat.
    pub(crate) fn leave(&self, left: &AtomicBool) {
        let _writes = self.lock();
        left.store(true, Ordering::Release);
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Ready when the connection's writer has written everything it had and waits for the
    /// response's next chunk: the moment a response may take a seat in a fan-out, nothing of
    /// its own being left to write before the fan-out's. Pending (forever) where the serve
    /// loop does not write the response itself.
    pub fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.idle {
            return Poll::Ready(());
        }
        keep_waker(&mut state.idle_waker, cx);
        Poll::Pending
    }

    /// The writer says whether it waits for more (see [`poll_idle`](Self::poll_idle)).
    pub(crate) fn set_idle(&self, idle: bool) {
        let mut state = self.lock();
        state.idle = idle;
        if idle && let Some(waker) = state.idle_waker.take() {
            waker.wake();
        }
    }

    /// Writes `buf` whole (after what is pending) and everything pending.
    pub(crate) async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        if !buf.is_empty() {
            std::future::poll_fn(|cx| self.poll_write(cx, buf)).await?;
        }
        self.flush().await
    }

    /// Writes everything pending.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            self.poll_drain(&mut state, cx)
        })
        .await
    }

    /// No fan-out writes to the socket from now on: the connection is closing. Its seats
    /// should be dropped too.
    pub fn shut(&self) {
        self.lock().shut = true;
    }

    /// Ready when a fan-out let the connection go or left bytes for it to write (then flush
    /// the connection, and take back the subscriptions whose [`Seat`] was let go).
    pub fn poll_attention(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if std::mem::take(&mut state.attention) {
            return Poll::Ready(());
        }
        keep_waker(&mut state.waker, cx);
        Poll::Pending
    }

    /// Waits for [`poll_attention`](Self::poll_attention).
    pub fn attention(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_attention(cx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fan-out's write of `frames`, all or what the socket takes at once. With `answers`, the
    /// frames are the whole answer to the request being answered (a held poll's): once any of
    /// it is written, the gate [says so](Self::take_answered).
    pub(crate) fn offer(
        &self,
        frames: &[IoSlice<'_>],
        total: usize,
        left: &AtomicBool,
        answers: bool,
    ) -> Offered {
        let mut state = self.lock();
        if left.load(Ordering::Acquire) {
            return Offered::Left;
        }
        if state.shut || !state.pending.is_empty() {
            return Offered::Refused;
        }
        let written = match self.tcp.try_write_vectored(frames) {
            Ok(n) if n == total => {
                if answers {
                    state.answered = true;
                    if state.wake_on_answer {
                        state.call();
                    }
                }
                return Offered::Written;
            }
            Ok(n) => n,
            // Full, or failed (the connection's task finds out which when it writes).
            Err(_) => {
                state.rest_until = Some(std::time::Instant::now() + REST);
                return Offered::Refused;
            }
        };
        // The rest waits, whole frames behind it, for the connection's task to write.
        let mut skip = written;
        for frame in frames {
            if skip >= frame.len() {
                skip -= frame.len();
                continue;
            }
            state.pending.extend_from_slice(&frame[skip..]);
            skip = 0;
        }
        state.rest_until = Some(std::time::Instant::now() + REST);
        state.answered = answers;
        state.call();
        Offered::Partly
    }

    /// Whether a fan-out found the socket full a moment ago: its connection writes its own
    /// for a while.
    pub(crate) fn resting(&self) -> bool {
        let mut state = self.lock();
        match state.rest_until {
            Some(until) if std::time::Instant::now() < until => true,
            Some(_) => {
                state.rest_until = None;
                false
            }
            None => false,
        }
    }

    /// Writes what is pending until it is all written (`Ok(true)`) or some of it was
    /// (`Ok(false)`): a deadline on this is one on the peer's reading, not on how much a
    /// fan-out adds meanwhile.
    pub fn poll_progress(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut state = self.lock();
        let before = state.pending.len();
        match self.poll_drain(&mut state, cx) {
            Poll::Ready(done) => Poll::Ready(done.map(|()| true)),
            Poll::Pending if state.pending.len() < before => Poll::Ready(Ok(false)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Tells the connection's task to look at its seats.
    pub(crate) fn call(&self) {
        self.lock().call();
    }

    /// Writes what is pending; Ready(Ok) when nothing is left.
    fn poll_drain(&self, state: &mut GateState, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !state.pending.is_empty() {
            let written = std::task::ready!(poll_write_with(&self.tcp, cx, |tcp| {
                tcp.try_write(&state.pending)
            }))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            state.pending.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

/// Keeps `cx`'s waker in `slot` (unless it holds one that wakes the same task).
fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl GateState {
    fn call(&mut self) {
        self.attention = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A connection's upgraded handle, with its writes going through the connection's [`Gate`]
/// when it has one.
#[derive(Debug)]
pub struct GatedIo<U> {
    gate: Option<Arc<Gate>>,
    io: U,
}

impl<U> GatedIo<U> {
    /// `io` (the connection's upgraded handle, which reads the bytes already read) read as is,
    /// written through `gate` (or as is, without one).
    pub fn new(gate: Option<Arc<Gate>>, io: U) -> Self {
        Self { gate, io }
    }
}

impl<U: AsyncRead + Unpin> AsyncRead for GatedIo<U> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<U: AsyncWrite + Unpin> AsyncWrite for GatedIo<U> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &this.gate {
            Some(gate) => gate.poll_write(cx, buf),
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &this.gate {
            Some(gate) => {
                let mut state = gate.lock();
                gate.poll_drain(&mut state, cx)
            }
            None => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(gate) = &this.gate {
            let mut state = gate.lock();
            state.shut = true;
            std::task::ready!(gate.poll_drain(&mut state, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl Gate {
    /// The connection's own write of `buf`: accepted whole (so a fan-out never follows part
    /// of a frame), after what is pending, unless too much is pending already.
    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        if !state.pending.is_empty() {
            match self.poll_drain(&mut state, cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
                // Waiting for room (the task is registered): held behind what is pending.
                Poll::Pending if state.pending.len() + buf.len() > MAX_PENDING => {
                    return Poll::Pending;
                }
                Poll::Pending => {
                    state.pending.extend_from_slice(buf);
                    return Poll::Ready(Ok(buf.len()));
                }
            }
        }
        match self.tcp.try_write(buf) {
            Ok(n) => {
                state.pending.extend_from_slice(&buf[n..]);
                Poll::Ready(Ok(buf.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && buf.len() <= MAX_PENDING => {
                state.pending.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Too much to hold: wait for room.
                match self.tcp.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// How a transport writes one message to a subscriber: its bytes on the wire, the same for
/// every subscriber of the topic that joined with it (cache them in the message's
/// [`encodings`](pushpull_core::Message::encodings)).
pub type Encoder = Arc<dyn Fn(&Delivery) -> Bytes + Send + Sync>;

/// Tasks per topic by key (a topic's fan-out, or the task of its held polls): one is made
/// when a second connection wants it, since a topic read by one connection would gain nothing
/// (its one wake-up would move from the connection's task to the topic's) and pay a task and
/// a subscription.
pub(crate) struct Tasks<K, T> {
    slots: Mutex<HashMap<K, Slot<T>>>,
}

enum Slot<T> {
    /// One connection wants the key's task; the next makes it.
    Wanted(Weak<Gate>),
    Running(Arc<T>),
}

/// What a connection wanting a key's task came to.
pub(crate) enum Wanted<S> {
    /// The running task took it in (or would not: its own answer).
    Seated(S),
    /// There is none yet, and another connection wanted one: make it.
    Start,
    /// There is none yet: this is the first connection to want one.
    First,
}

impl<K: std::hash::Hash + Eq + Clone, T> Tasks<K, T> {
    pub(crate) fn new() -> Self {
        Self { slots: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<T>>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection of `gate` wants the task of `key`: if one runs, `seat` takes it in
    /// (`None` when that task has ended: then it is as if none ran).
    pub(crate) fn want<S>(
        &self,
        key: &K,
        gate: &Arc<Gate>,
        seat: impl FnOnce(&Arc<T>) -> Option<S>,
    ) -> Wanted<S> {
        let mut slots = self.lock();
        let start = match slots.get(key) {
            Some(Slot::Running(task)) => match seat(task) {
                Some(seated) => return Wanted::Seated(seated),
                // It ended: the next to want one makes it again.
                None => false,
            },
            Some(Slot::Wanted(first)) => {
                first.upgrade().is_some_and(|first| !Arc::ptr_eq(&first, gate))
            }
            None => false,
        };
        if start {
            return Wanted::Start;
        }
        if slots.len().is_power_of_two() {
            // Forget the wishes of connections gone, now and then.
            slots.retain(|_, slot| match slot {
                Slot::Wanted(gate) => gate.strong_count() > 0,
                Slot::Running(_) => true,
            });
        }
        slots.insert(key.clone(), Slot::Wanted(Arc::downgrade(gate)));
        Wanted::First
    }

    /// Makes `task` the running task of `key`, unless another connection made one meanwhile:
    /// then `Err` with that one.
    pub(crate) fn install(&self, key: K, task: impl FnOnce() -> Arc<T>) -> Result<Arc<T>, Arc<T>> {
        let mut slots = self.lock();
        if let Some(Slot::Running(running)) = slots.get(&key) {
            return Err(running.clone());
        }
        let task = task();
        slots.insert(key, Slot::Running(task.clone()));
        Ok(task)
    }

    /// Forgets `task`, if it is still the running task of `key`.
    pub(crate) fn forget(&self, key: &K, task: &Arc<T>) {
        let mut slots = self.lock();
        if let Some(Slot::Running(running)) = slots.get(key)
            && Arc::ptr_eq(running, task)
        {
            slots.remove(key);
        }
    }

    /// The running tasks.
    pub(crate) fn running(&self) -> Vec<Arc<T>> {
        let slots = self.lock();
        let running = slots.values().filter_map(|slot| match slot {
            Slot::Running(task) => Some(task.clone()),
            Slot::Wanted(_) => None,
        });
        running.collect()
    }

    /// The running task of `key`.
    #[cfg(test)]
    fn running_of(&self, key: &K) -> Option<Arc<T>> {
        match self.lock().get(key)? {
            Slot::Running(task) => Some(task.clone()),
            Slot::Wanted(_) => None,
        }
    }
}

/// A server's topic fan-outs. See the [module](self).
pub struct FanOut {
    broker: Arc<dyn Broker>,
    meter: DeliveryMeter,
    hubs: Tasks<(Topic, &'static str), Hub>,
    /// Deliveries written by fan-outs.
    written: AtomicU64,
    /// Connections let go (a full socket, a gap or an error in the topic's stream).
    let_go: AtomicU64,
    this: Weak<FanOut>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut").field("written", &self.written).finish_non_exhaustive()
    }
}

/// One topic's fan-out, in one encoding.
struct Hub {
    key: (Topic, &'static str),
    encode: Encoder,
    state: Mutex<HubState>,
    /// Wakes its task to forget members that left (and end, if none is left).
    look: tokio::sync::Notify,
    /// Joins that came while its state was locked (mostly: while it wrote a batch), taken in
    /// as soon as it can: a connection is seated whenever it joins, not only when the hub is
    /// idle (refused, it would serve itself for at least one more message).
    queued: Mutex<Queued>,
}

/// A hub's [queued](Hub::queued) joins.
#[derive(Default)]
struct Queued {
    /// Each, with the epoch and the offset it had delivered when it joined.
    members: Vec<(Arc<Member>, Epoch, u64)>,
    /// The hub has ended: no more joins are queued.
    closed: bool,
}

struct HubState {
    epoch: Epoch,
    /// The offset of the last message it handled.
    offset: u64,
    /// Each member, and the offset it already has (written by its own task, ahead of the
    /// hub when it joined).
    members: Vec<(Arc<Member>, u64)>,
    ended: bool,
}

#[derive(Debug)]
struct Member {
    gate: Arc<Gate>,
    /// Where its connection carries on from, once let go.
    resume: OnceLock<Cursor>,
    /// Its seat was dropped: nothing more is written for it (set under its gate's lock, which
    /// every write holds), and its hub forgets it.
    left: AtomicBool,
}

/// A message of a fan-out's batch: its offset, its delivery and its frame.
type Batched = (u64, Delivery, Bytes);

/// A connection's place in a topic's fan-out; dropping it leaves. See the [module](self).
pub struct Seat {
    hub: Arc<Hub>,
    member: Arc<Member>,
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seat").field("topic", &self.hub.key.0).finish_non_exhaustive()
    }
}

impl Seat {
    /// The cursor to carry on from when the fan-out let the connection go (its socket was full,
    /// or the topic's stream ended or had a gap); `None` while it is seated.
    pub fn let_go(&self) -> Option<Cursor> {
        self.member.resume.get().copied()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        // Never waits for the hub (which holds its lock for a whole batch's writes): marked
        // under the gate's lock, it is written no more, and the hub forgets it.
        self.member.gate.leave(&self.member.left);
        self.hub.look.notify_one();
    }
}

impl FanOut {
    /// The fan-outs of a server over `broker`, counting deliveries with `meter`.
    pub fn new(broker: Arc<dyn Broker>, meter: DeliveryMeter) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            broker,
            meter,
            hubs: Tasks::new(),
            written: AtomicU64::new(0),
            let_go: AtomicU64::new(0),
            this: this.clone(),
        })
    }

    /// Deliveries written by fan-outs so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Connections let go so far: their socket was full, or their topic's stream had a gap or
    /// an error.
    pub fn let_go(&self) -> u64 {
        self.let_go.load(Ordering::Relaxed)
    }

    /// Connections seated in a fan-out right now (queued joins included), over all topics.
    pub fn seated(&self) -> usize {
        let hubs = self.hubs.running();
        let here = |member: &Arc<Member>| !member.left.load(Ordering::Acquire);
        let seated = |hub: &Arc<Hub>| {
            let state = hub.lock();
            let queued = hub.queue_lock().members.iter().filter(|(m, _, _)| here(m)).count();
            state.members.iter().filter(|(member, _)| here(member)).count() + queued
        };
        hubs.iter().map(seated).sum()
    }

    /// Topics with a running fan-out.
    pub fn running(&self) -> usize {
        self.hubs.running().len()
    }

    /// The gate of the connection `request` came on ([`Gate::of`]), when this server's
    /// fan-outs may seat it: none on a broker whose subscriptions cannot be left unpolled
    /// ([`Subscribe::parks`](pushpull_core::Subscribe::parks)), whose connections read their
    /// own.
    pub fn gate_of<B>(&self, request: &http::Request<B>) -> Option<Arc<Gate>> {
        self.broker.parks().then(|| Gate::of(request)).flatten()
    }

    /// Seats the connection of `gate`, whose subscription to `topic` has delivered up to
    /// `cursor` and has nothing more ready, in the topic's fan-out of encoding `style` (made by
    /// `encode`): from the message after `cursor`, the fan-out writes to it. `None` when it
    /// cannot be seated now (the connection keeps reading its subscription): the fan-out is
    /// already past `cursor`, the topic has no fan-out and this is the first connection to
    /// want one, or the cursor names no offset. A join while the fan-out writes is queued and
    /// seated; should the fan-out be past `cursor` when it takes its queue in, the seat is let
    /// go from `cursor`.
    pub async fn join(
        &self,
        topic: &Topic,
        style: &'static str,
        encode: &Encoder,
        cursor: Cursor,
        gate: &Arc<Gate>,
    ) -> Option<Seat> {
        let Cursor::After(epoch, Offset(offset)) = cursor else { return None };
        // A broker whose readers may hold something another reader needs while they wait
        // cannot have one left unpolled: its connections read their own.
        if !self.broker.parks() || gate.resting() {
            return None;
        }
        let key = (topic.clone(), style);
        match self.hubs.want(&key, gate, |hub| self.seat(hub, epoch, offset, gate)) {
            Wanted::Seated(seat) => seat,
            Wanted::Start => self.start(key, encode, epoch, offset, gate).await,
            Wanted::First => None,
        }
    }

    /// Seats `gate` in `hub`: `None` when the hub has ended, `Some(None)` when it is past
    /// `offset` (or in another epoch).
    fn seat(
        &self,
        hub: &Arc<Hub>,
        epoch: Epoch,
        offset: u64,
        gate: &Arc<Gate>,
    ) -> Option<Option<Seat>> {
        // Never waiting while it writes a batch (it holds the lock for all its members'
        // writes): then the join is queued.
        let mut state = match hub.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Taken in after the batch, or let go from its offset if the hub is past it.
            Err(std::sync::TryLockError::WouldBlock) => return hub.queue(epoch, offset, gate),
        };
        if state.ended {
            return None;
        }
        if state.epoch != epoch || offset < state.offset {
            return Some(None);
        }
        let member = Member::new(gate);
        state.members.push((member.clone(), offset));
        Some(Some(Seat { hub: hub.clone(), member }))
    }

    /// Makes the fan-out of `key` (its first two members want it), seating `gate`.
    async fn start(
        &self,
        key: (Topic, &'static str),
        encode: &Encoder,
        epoch: Epoch,
        offset: u64,
        gate: &Arc<Gate>,
    ) -> Option<Seat> {
        let cursor = Cursor::After(epoch, Offset(offset));
        let subscription = match self.broker.relay(&key.0, cursor).await {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::debug!(%error, topic = %key.0, "no fan-out: the subscription failed");
                return None;
            }
        };
        let made = self.hubs.install(key.clone(), || {
            Arc::new(Hub {
                key,
                encode: encode.clone(),
                state: Mutex::new(HubState { epoch, offset, members: Vec::new(), ended: false }),
                look: tokio::sync::Notify::new(),
                queued: Mutex::default(),
            })
        });
        match made {
            Ok(hub) => {
                let seat = self.seat(&hub, epoch, offset, gate).flatten();
                tokio::spawn(run(self.this.clone(), hub, subscription));
                seat
            }
            // Another connection made it meanwhile.
            Err(hub) => self.seat(&hub, epoch, offset, gate).flatten(),
        }
    }

    /// Ends `hub` if it has no members, and forgets it; whether it ended.
    fn end(&self, hub: &Arc<Hub>) -> bool {
        {
            let mut state = hub.lock();
            if state.ended {
                return true;
            }
            let let_go = hub.admit(&mut state, None).2;
            self.let_go.fetch_add(let_go, Ordering::Relaxed);
            if !state.members.is_empty() {
                return false;
            }
            let mut queued = hub.queue_lock();
            if !queued.members.is_empty() {
                // Joined since it was taken in: kept for the next look.
                hub.look.notify_one();
                return false;
            }
            queued.closed = true;
            state.ended = true;
        }
        // A connection that wants it from now on finds it ended, and wants a new one.
        self.hubs.forget(&hub.key, hub);
        true
    }

    /// Ends `hub` whatever its members: each is let go, to carry on from where it is, and to
    /// take no seat for `rest`, if given.
    fn end_all(&self, hub: &Arc<Hub>, rest: Option<std::time::Duration>) {
        {
            let mut state = hub.lock();
            state.ended = true;
            let epoch = state.epoch;
            let queued = {
                let mut queued = hub.queue_lock();
                queued.closed = true;
                std::mem::take(&mut queued.members)
            };
            let members = state.members.drain(..).map(|(member, offset)| (member, epoch, offset));
            let all: Vec<_> = members.chain(queued).collect();
            self.let_go.fetch_add(all.len() as u64, Ordering::Relaxed);
            // Each carries on from where it is (a queued one: where it joined).
            for (member, epoch, offset) in all {
                if let Some(rest) = rest {
                    member.gate.lock().rest_until = Some(std::time::Instant::now() + rest);
                }
                member.let_go(Cursor::After(epoch, Offset(offset)));
            }
        }
        self.hubs.forget(&hub.key, hub);
    }
}

impl Member {
    fn new(gate: &Arc<Gate>) -> Arc<Self> {
        Arc::new(Self { gate: gate.clone(), resume: OnceLock::new(), left: AtomicBool::new(false) })
    }

    /// Lets the member go, to carry on from `resume`: its connection's task is told.
    fn let_go(&self, resume: Cursor) {
        let _ = self.resume.set(resume);
        self.gate.call();
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue_lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seats `gate`, whose connection has delivered up to `offset` of `epoch`, while the hub's
    /// state is locked: queued, to be taken in by [`admit`](Self::admit). `None` when the hub
    /// has ended.
    fn queue(
        self: &Arc<Self>,
        epoch: Epoch,
        offset: u64,
        gate: &Arc<Gate>,
    ) -> Option<Option<Seat>> {
        let mut queued = self.queue_lock();
        if queued.closed {
            return None;
        }
        let member = Member::new(gate);
        queued.members.push((member.clone(), epoch, offset));
        Some(Some(Seat { hub: self.clone(), member }))
    }

    /// Takes in the queued joins (until none is left: more may come while it writes). With
    /// `batch`, the messages just written to the members, after `before` (the hub's offset
    /// before them): a joiner that had delivered up to `before` or further is written what it
    /// lacks of them and seated. Without, a joiner up to the hub's offset is seated. A joiner
    /// behind that, or of another epoch, lacks what the hub has written: it is let go, to
    /// carry on from where it joined. Returns deliveries written, their bytes, and members let
    /// go.
    fn admit<'a>(
        &self,
        state: &mut HubState,
        batch: Option<(u64, &'a [Batched])>,
    ) -> (u64, u64, u64) {
        let (mut written, mut bytes, mut let_go) = (0, 0, 0);
        let before = batch.map_or(state.offset, |(before, _)| before);
        let mut slices: Vec<IoSlice<'a>> = Vec::new();
        loop {
            let queued = std::mem::take(&mut self.queue_lock().members);
            if queued.is_empty() {
                return (written, bytes, let_go);
            }
            for (member, epoch, has) in queued {
                if member.left.load(Ordering::Acquire) {
                    continue;
                }
                if epoch != state.epoch || has < before {
                    member.let_go(Cursor::After(epoch, Offset(has)));
                    let_go += 1;
                    continue;
                }
                let Some((_, messages)) = batch else {
                    state.members.push((member, has));
                    continue;
                };
                let offered = offer(&member, has, messages, state.epoch, &mut slices);
                let (kept, count, total, gone) = offered;
                written += count;
                bytes += total;
                let_go += gone;
                if let Some(has) = kept {
                    state.members.push((member, has));
                }
            }
        }
    }

    /// Writes `messages` (in offset order, following on from the hub's offset) to each member
    /// that does not have them yet; a member whose socket does not take them all is let go.
    /// Returns how many deliveries were written, and their bytes.
    fn write(&self, messages: &[Batched]) -> (u64, u64, u64) {
        let Some((last, _, _)) = messages.last() else { return (0, 0, 0) };
        let mut state = self.lock();
        // Those that joined since the last batch get this one with the rest.
        let (mut written, mut bytes, mut let_go) = self.admit(&mut state, None);
        let epoch = state.epoch;
        let mut slices = Vec::with_capacity(messages.len());
        state.members.retain_mut(|(member, has)| {
            let (kept, count, total, gone) = offer(member, *has, messages, epoch, &mut slices);
            written += count;
            bytes += total;
            let_go += gone;
            match kept {
                Some(now) => {
                    *has = now;
                    true
                }
                None => false,
            }
        });
        // And those that joined while it wrote, what they lack of it.
        let before = state.offset;
        let admitted = self.admit(&mut state, Some((before, messages)));
        state.offset = *last;
        (written + admitted.0, bytes + admitted.1, let_go + admitted.2)
    }
}

/// Offers `member`, which has up to `has`, what it lacks of `messages` (in offset order):
/// returns the offset it has now if it stays seated (`None` when it left, or its socket did not
/// take them all and it was let go), and the deliveries written, their bytes, and whether it was
/// let go.
fn offer<'a>(
    member: &Member,
    has: u64,
    messages: &'a [Batched],
    epoch: Epoch,
    slices: &mut Vec<IoSlice<'a>>,
) -> (Option<u64>, u64, u64, u64) {
    let from = messages.partition_point(|(offset, _, _)| *offset <= has);
    let ahead = &messages[from..];
    let Some((last, _, _)) = ahead.last() else { return (Some(has), 0, 0, 0) };
    let total: usize = ahead.iter().map(|(_, _, frame)| frame.len()).sum();
    let count = ahead.len() as u64;
    slices.clear();
    slices.extend(ahead.iter().map(|(_, _, frame)| IoSlice::new(frame)));
    match member.gate.offer(slices, total, &member.left, false) {
        Offered::Left => (None, 0, 0, 0),
        Offered::Written => (Some(*last), count, total as u64, 0),
        Offered::Partly => {
            // The rest is in its gate: it has them all, and carries on after them.
            let _ = member.resume.set(Cursor::After(epoch, Offset(*last)));
            (None, count, total as u64, 1)
        }
        Offered::Refused => {
            member.let_go(Cursor::After(epoch, Offset(has)));
            (None, 0, 0, 1)
        }
    }
}

/// A fan-out's task: reads the topic and writes each batch of messages to its members, until
/// its last member leaves or the topic's stream does something but deliver messages.
async fn run(fanout: Weak<FanOut>, hub: Arc<Hub>, mut subscription: Subscription) {
    let mut batch: Vec<Batched> = Vec::with_capacity(BATCH);
    // How long it spent writing since `since`, on a CPU.
    let (mut since, mut busy) = (std::time::Instant::now(), std::time::Duration::ZERO);
    loop {
        let first = tokio::select! {
            item = subscription.next() => item,
            () = hub.look.notified() => {
                let Some(fanout) = fanout.upgrade() else { return };
                hub.lock().members.retain(|(member, _)| !member.left.load(Ordering::Acquire));
                if fanout.end(&hub) {
                    return;
                }
                continue;
            }
        };
        // A gap or an error is each member's own to meet, from its own subscription.
        let other = gather(first, &mut subscription, BATCH, |offset, delivery| {
            let frame = (hub.encode)(&delivery);
            batch.push((offset, delivery, frame));
        });
        let Some(fanout) = fanout.upgrade() else { return };
        let started = thread_time();
        let (written, bytes, let_go) = hub.write(&batch);
        busy += thread_time().saturating_sub(started);
        fanout.let_go.fetch_add(let_go, Ordering::Relaxed);
        if written > 0 {
            fanout.written.fetch_add(written, Ordering::Relaxed);
            fanout.meter.fanned_out(batch.iter().map(|(_, delivery, _)| delivery), written, bytes);
        }
        batch.clear();
        if other {
            fanout.end_all(&hub, None);
            return;
        }
        if fanout.end(&hub) {
            return;
        }
        let elapsed = since.elapsed();
        if elapsed >= WINDOW {
            if busy * 5 > elapsed * 4 {
                // Writing most of the time: a topic this busy is written more cheaply by each
                // connection's task, which gathers what is ready into one write.
                fanout.end_all(&hub, Some(COOL));
                return;
            }
            (since, busy) = (std::time::Instant::now(), std::time::Duration::ZERO);
        }
    }
}

/// Gathers the messages a topic task's `subscription` has ready, `first` (what woke the task)
/// and up to `most` in all, handing each to `take` (its offset and delivery) in order: whether it
/// stopped at something other than a message (a gap, an error, the end), which is the task's
/// members' own to meet.
pub(crate) fn gather(
    first: Option<pushpull_core::Result<Delivery>>,
    subscription: &mut Subscription,
    most: usize,
    mut take: impl FnMut(u64, Delivery),
) -> bool {
    let mut item = Some(first);
    let mut taken = 0;
    while let Some(next) = item.take() {
        let Some(Ok(Delivery::Message(message))) = next else { return true };
        take(offset_of(&message), Delivery::Message(message));
        taken += 1;
        if taken < most {
            item = subscription.next().now_or_never();
        }
    }
    false
}

/// The time the calling thread has spent running (where the system says; else the time
/// since a fixed moment). A fan-out writes a batch in one synchronous loop on one thread, so
/// this measures what its writes cost, not how long other processes sharing the core kept it
/// waiting: server processes sharing a core, each writing one message to thousands of
/// sockets, are not busy though each loop takes long.
fn thread_time() -> std::time::Duration {
    #[cfg(unix)]
    {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        std::time::Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
    }
    #[cfg(not(unix))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

fn offset_of(message: &Message) -> u64 {
    message.offset.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A socket whose peer sent `sent` bytes, once they can be read.
    async fn socket_with(sent: &[u8]) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(sent).await.unwrap();
        server.readable().await.unwrap();
        (server, client)
    }

    /// A connection's gate on the server's side of a loopback socket, and the client's side.
    async fn gated() -> (Arc<Gate>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Gate::new(Arc::new(server)), client)
    }

    /// A memory broker's topic with two messages, and a fan-out of it running from the first
    /// (two connections joined there, the second seated): the broker, the fan-out, the topic,
    /// the cursors after each message, the seat and the client of the seated connection.
    struct Running {
        broker: Arc<dyn Broker>,
        fanout: Arc<FanOut>,
        topic: Topic,
        cursors: [Cursor; 2],
        _seated: (Seat, TcpStream),
        _wanted: (Arc<Gate>, TcpStream),
    }

    async fn running() -> Running {
        let broker: Arc<dyn Broker> = Arc::new(pushpull_core::MemoryBroker::new());
        let topic = Topic::new("queued").unwrap();
        let mut cursors = Vec::new();
        for payload in ["one", "two"] {
            let publication = pushpull_core::Publication::new(payload);
            let receipt = broker.publish(&topic, publication).await.unwrap();
            cursors.push(Cursor::After(receipt.epoch, receipt.offset));
        }
        let fanout = FanOut::new(broker.clone(), DeliveryMeter::new("test"));
        let (first, first_client) = gated().await;
        let (second, second_client) = gated().await;
        assert!(fanout.join(&topic, "test", &payloads(), cursors[1], &first).await.is_none());
        let seat = fanout.join(&topic, "test", &payloads(), cursors[1], &second).await;
        let seat = seat.expect("the second connection to want a fan-out starts it");
        Running {
            broker,
            fanout,
            topic,
            cursors: [cursors[0], cursors[1]],
            _seated: (seat, second_client),
            _wanted: (first, first_client),
        }
    }

    /// Writes each message's payload.
    fn payloads() -> Encoder {
        Arc::new(|delivery: &Delivery| match delivery {
            Delivery::Message(message) => message.payload.clone(),
            _ => Bytes::new(),
        })
    }

    impl Running {
        fn hub(&self) -> Arc<Hub> {
            let key = (self.topic.clone(), "test");
            self.fanout.hubs.running_of(&key).expect("the fan-out is not running")
        }

        async fn join(&self, cursor: Cursor, gate: &Arc<Gate>) -> Option<Seat> {
            self.fanout.join(&self.topic, "test", &payloads(), cursor, gate).await
        }

        /// A join to the running hub, which never waits.
        fn join_now(&self, cursor: Cursor, gate: &Arc<Gate>) -> Option<Seat> {
            self.join(cursor, gate).now_or_never().expect("a join to a running fan-out waits")
        }

        async fn publish(&self, payload: &'static str) {
            let publication = pushpull_core::Publication::new(payload);
            self.broker.publish(&self.topic, publication).await.unwrap();
        }
    }

    /// Reads from `client` until `expected` has come.
    async fn reads(client: &mut TcpStream, expected: &[u8]) {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; expected.len()];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.read_exact(&mut got));
        read.await.expect("the fan-out wrote it in time").unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_connection_that_joins_while_its_fanout_writes_is_seated_not_refused() {
        let running = running().await;
        let (gate, mut client) = gated().await;
        // While the hub's state is locked (as it is for a whole batch's writes), a join is
        // queued: seated, not refused.
        let hub = running.hub();
        let writing = hub.lock();
        let seat = running.join_now(running.cursors[1], &gate).expect("seated while it writes");
        drop(writing);
        assert_eq!(running.fanout.seated(), 2);
        running.publish("three").await;
        reads(&mut client, b"three").await;
        running.publish("four").await;
        reads(&mut client, b"four").await;
        assert_eq!(seat.let_go(), None);
        assert_eq!(running.fanout.seated(), 2);
    }

    #[tokio::test]
    async fn a_queued_join_the_fanout_has_moved_past_is_let_go_from_where_it_joined() {
        let running = running().await;
        let (gate, _client) = gated().await;
        // Queued at the first message, with the hub past it: what it lacks (the second) the
        // hub will not write, so it is let go to read it on its own.
        let hub = running.hub();
        let writing = hub.lock();
        let seat = running.join_now(running.cursors[0], &gate).expect("queued");
        drop(writing);
        running.publish("three").await;
        tokio::time::timeout(std::time::Duration::from_secs(10), gate.attention())
            .await
            .expect("its connection is told");
        assert_eq!(seat.let_go(), Some(running.cursors[0]));
        assert_eq!(running.fanout.seated(), 1);
    }

    #[tokio::test]
    async fn a_queued_join_of_a_fanout_that_ends_is_let_go() {
        let running = running().await;
        let (gate, _client) = gated().await;
        let hub = running.hub();
        let writing = hub.lock();
        let seat = running.join_now(running.cursors[1], &gate).expect("queued");
        drop(writing);
        running.fanout.end_all(&hub, None);
        assert_eq!(seat.let_go(), Some(running.cursors[1]));
        tokio::time::timeout(std::time::Duration::from_secs(10), gate.attention())
            .await
            .expect("its connection is told");
        // And an ended hub queues no more.
        let (late, _late_client) = gated().await;
        let Cursor::After(epoch, Offset(offset)) = running.cursors[1] else { unreachable!() };
        assert!(hub.queue(epoch, offset, &late).is_none());
    }

    #[tokio::test]
    async fn a_read_that_drains_the_socket_leaves_it_waiting_for_more() {
        let (server, mut client) = socket_with(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut buf = [0u8; 1024];
        assert_eq!(try_read_drained(&server, &mut buf).unwrap(), 18);
        // Drained: the next wait for readability waits, instead of returning at once for a
        // read that would find nothing.
        assert!(server.readable().now_or_never().is_none(), "readiness left set");
        // And what comes next wakes it.
        client.write_all(b"more").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server.readable())
            .await
            .expect("woken by the next bytes")
            .unwrap();
        assert_eq!(try_read_drained(&server, &mut buf).unwrap(), 4);
    }

    #[tokio::test]
    async fn a_read_that_fills_the_buffer_leaves_the_rest_readable_and_a_close_stays_seen() {
        let (server, client) = socket_with(b"0123456789").await;
        let mut buf = [0u8; 4];
        assert_eq!(try_read_drained(&server, &mut buf).unwrap(), 4);
        // Not drained: ready at once for the rest.
        assert!(server.readable().now_or_never().is_some());
        let mut rest = [0u8; 64];
        assert_eq!(try_read_drained(&server, &mut rest).unwrap(), 6);
        drop(client);
        tokio::time::timeout(std::time::Duration::from_secs(10), server.readable())
            .await
            .expect("woken by the close")
            .unwrap();
        // The end of the stream is read as often as it is asked for.
        assert_eq!(try_read_drained(&server, &mut rest).unwrap(), 0);
        assert!(server.readable().now_or_never().is_some());
        assert_eq!(try_read_drained(&server, &mut rest).unwrap(), 0);
    }
}
