//! A subscription read from one long HTTP response, reopened from its cursor when it ends:
//! what the SSE and chunked-streaming clients share (through [`PushClient`]), for one topic or
//! for many on one response.

use std::collections::VecDeque;
use std::time::Duration;

use crate::many_client::{ManyQuery, Track};
use crate::push_client::{PushClient, PushReader, Scope, Target};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pushpull_core::{
    Continuity, Cursor, Delivery, Error, ErrorKind, FollowRequest, MultiSubscription, Position,
    Subscription, Topic,
};

/// Opens `source`'s stream of `topic` at `start` and returns the subscription once the stream
/// has shown its first record (its starting position, or a delivery): so a stream that a proxy
/// buffers, and that would show nothing until it ends, fails here with a time-out after the
/// source's idle timeout instead of hanging in the application, and `beginning` and `latest`
/// are resolved to a position.
///
/// When the response ends, breaks or goes silent, it is reopened from the cursor after the last
/// delivery (or the position the stream gave), after the server's retry hint and then with
/// backoff (longer when an answer's `Retry-After` asks for it). A delivery that repeats one
/// already handed over is dropped; one that skips ahead makes it reopen from its cursor. Only
/// an error that a retry cannot change ends it.
pub async fn reopening<R: PushReader>(
    source: PushClient<R>,
    topic: Topic,
    start: Cursor,
) -> Result<Subscription, Error> {
    let track = Track::One { topic: topic.clone(), position: Position::new(start) };
    let reader = Reader::start(source, track).await?;
    let Track::One { position, .. } = &reader.track else { unreachable!("one topic") };
    let cursor = position.cursor();
    Ok(Subscription::new(topic, cursor, futures::stream::unfold(reader, Reader::next)))
}

/// Like [`reopening`], for every topic `request` follows on one response of the transport's
/// route for many topics: reopened with the cursor set of what it handed over, each topic
/// checked for repeats and skips on its own.
pub async fn reopening_many<R: PushReader>(
    source: PushClient<R>,
    request: &FollowRequest,
) -> Result<MultiSubscription, Error> {
    let reader = Reader::start(source, Track::Many(ManyQuery::new(request))).await?;
    let Track::Many(query) = &reader.track else { unreachable!("many topics") };
    // Deliveries the first chunks brought are not handed over yet.
    let cursors = query.positions().before(&reader.ready);
    Ok(MultiSubscription::new(cursors, futures::stream::unfold(reader, Reader::next)))
}

struct Reader<R: PushReader> {
    source: PushClient<R>,
    track: Track,
    body: Option<Incoming>,
    decoder: R::Decoder,
    retry: Option<Duration>,
    /// The delay the last failed attempt's answer asked for (`Retry-After`).
    asked: Option<Duration>,
    ready: VecDeque<Delivery>,
    failures: u32,
    finished: bool,
    /// The stream has shown its first record.
    started: bool,
}

impl<R: PushReader> Reader<R> {
    /// Opens the response and reads until its first record.
    async fn start(source: PushClient<R>, track: Track) -> Result<Self, Error> {
        let body = open(&source, &track).await?;
        let mut reader = Reader {
            decoder: source.decoder(),
            source,
            track,
            body: Some(body),
            retry: None,
            asked: None,
            ready: VecDeque::new(),
            failures: 0,
            finished: false,
            started: false,
        };
        let idle = reader.source.idle_timeout();
        while !reader.started && reader.ready.is_empty() {
            let body = reader.body.as_mut().expect("open until it breaks");
            let what = &reader.track;
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else { continue };
                    reader.take(&chunk)?;
                    if reader.body.is_none() {
                        break; // it skipped ahead: the reader reopens it
                    }
                }
                Ok(Some(Err(error))) => {
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!("the stream of {what} broke before its first record: {error}"),
                    ));
                }
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("the stream of {what} ended before its first record"),
                    ));
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "the stream of {what} showed nothing for {idle:?}: is a proxy \
                             buffering it?"
                        ),
                    ));
                }
            }
        }
        Ok(reader)
    }

    // Not an `async fn`: one taking `mut self` keeps the state twice in its future (the
    // argument, and the mutable binding it is moved into), and a waiting stream is this future.
    fn next(
        self,
    ) -> impl std::future::Future<Output = Option<(Result<Delivery, Error>, Self)>> + Send {
        let mut this = self;
        async move {
            loop {
                if let Some(delivery) = this.ready.pop_front() {
                    return Some((Ok(delivery), this));
                }
                if this.finished {
                    return None;
                }
                let Some(body) = this.body.as_mut() else {
                    if let Err(error) = this.reopen().await {
                        this.finished = true;
                        return Some((Err(error), this));
                    }
                    continue;
                };
                let idle = this.source.idle_timeout();
                match tokio::time::timeout(idle, body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        let Ok(chunk) = frame.into_data() else { continue };
                        this.failures = 0;
                        if let Err(error) = this.take(&chunk) {
                            this.finished = true;
                            return Some((Err(error), this));
                        }
                    }
                    Ok(Some(Err(_)) | None) | Err(_) => {
                        tracing::debug!(stream = %this.track, "stream ended, broke or went silent; reopening");
                        this.body = None;
                    }
                }
            }
        }
    }

    fn take(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let scope = match &self.track {
            Track::One { topic, .. } => Scope::One(topic),
            Track::Many(query) => Scope::Many(query.keys()),
        };
        let decoded = self.source.decode(&mut self.decoder, scope, chunk)?;
        self.started |= decoded.position.is_some()
            || decoded.cursors.is_some()
            || !decoded.deliveries.is_empty();
        // Where the stream starts: it resolves `beginning` or `latest`.
        if let (Track::One { position, .. }, Some(start @ Cursor::After(..))) =
            (&mut self.track, decoded.position)
            && !position.cursor().is_position()
        {
            position.reset(start);
        }
        if decoded.retry.is_some() {
            self.retry = decoded.retry;
        }
        for delivery in decoded.deliveries {
            match self.track.check(&delivery) {
                Continuity::Next => {
                    self.track.advance(&delivery);
                    self.ready.push_back(delivery);
                }
                Continuity::Repeat => {}
                Continuity::Skip => {
                    tracing::warn!(
                        stream = %self.track,
                        topic = %delivery.topic(),
                        got = %delivery.cursor(),
                        "a delivery skipped ahead of the subscription; reopening from its cursor"
                    );
                    self.body = None;
                    break;
                }
            }
        }
        // The set a stream of many topics announced, after the chunk's deliveries (an SSE
        // id is the set after its event): it places the topics that have no position yet.
        if let (Track::Many(query), Some(cursors)) = (&mut self.track, &decoded.cursors) {
            query.announce(cursors);
        }
        Ok(())
    }

    /// Waits, then opens the stream again from where it stands. Only final errors come back.
    async fn reopen(&mut self) -> Result<(), Error> {
        loop {
            let backoff = self.source.backoff().delay(self.failures);
            let delay = match (self.failures, self.retry) {
                (0, Some(retry)) => retry,
                (_, retry) => retry.unwrap_or_default().max(backoff),
            };
            let delay = self.asked.take().map_or(delay, |asked| asked.max(delay));
            tokio::time::sleep(delay).await;
            match open(&self.source, &self.track).await {
                Ok(body) => {
                    self.body = Some(body);
                    self.decoder = self.source.decoder();
                    return Ok(());
                }
                Err(error) if error.is_retryable() => {
                    self.failures = self.failures.saturating_add(1);
                    self.asked = error.retry_after();
                    tracing::debug!(stream = %self.track, %error, "reopening failed; backing off");
                }
                Err(error) => return Err(error),
            }
        }
    }
}

async fn open<R: PushReader>(source: &PushClient<R>, track: &Track) -> Result<Incoming, Error> {
    match track {
        Track::One { topic, position } => source.open(Target::One(topic, position.cursor())).await,
        Track::Many(query) => source.open(Target::Many(&query.query())).await,
    }
}
