//! A subscription read from one long HTTP response, reopened from its cursor when it ends:
//! what the SSE and chunked-streaming clients share (through [`PushClient`]).

use std::collections::VecDeque;
use std::time::Duration;

use crate::push_client::{PushClient, PushReader};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pushpull_core::{
    Continuity, Cursor, Delivery, Error, ErrorKind, Position, Subscription, Topic,
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
    let body = source.open(&topic, start).await?;
    let mut reader = Reader {
        decoder: source.decoder(),
        source,
        topic: topic.clone(),
        position: Position::new(start),
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
                    format!("the stream of {topic} broke before its first record: {error}"),
                ));
            }
            Ok(None) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("the stream of {topic} ended before its first record"),
                ));
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the stream of {topic} showed nothing for {idle:?}: is a proxy buffering it?"
                    ),
                ));
            }
        }
    }
    let cursor = reader.position.cursor();
    Ok(Subscription::new(topic, cursor, futures::stream::unfold(reader, Reader::next)))
}

struct Reader<R: PushReader> {
    source: PushClient<R>,
    topic: Topic,
    /// After the last delivery handed over: where a reopened stream starts.
    position: Position,
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
    async fn next(mut self) -> Option<(Result<Delivery, Error>, Self)> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Some((Ok(delivery), self));
            }
            if self.finished {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                if let Err(error) = self.reopen().await {
                    self.finished = true;
                    return Some((Err(error), self));
                }
                continue;
            };
            let idle = self.source.idle_timeout();
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else { continue };
                    self.failures = 0;
                    if let Err(error) = self.take(&chunk) {
                        self.finished = true;
                        return Some((Err(error), self));
                    }
                }
                Ok(Some(Err(_)) | None) | Err(_) => {
                    tracing::debug!(topic = %self.topic, "stream ended, broke or went silent; reopening");
                    self.body = None;
                }
            }
        }
    }

    fn take(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let decoded = self.source.decode(&mut self.decoder, &self.topic, chunk)?;
        self.started |= decoded.position.is_some() || !decoded.deliveries.is_empty();
        if let Some(position @ Cursor::After(..)) = decoded.position {
            // Where the stream starts: it resolves `beginning` or `latest`.
            if !matches!(self.position.cursor(), Cursor::After(..)) {
                self.position.reset(position);
            }
        }
        if decoded.retry.is_some() {
            self.retry = decoded.retry;
        }
        for delivery in decoded.deliveries {
            match self.position.check(&delivery) {
                Continuity::Next => {
                    self.position.advance(&delivery);
                    self.ready.push_back(delivery);
                }
                Continuity::Repeat => {}
                Continuity::Skip => {
                    tracing::warn!(
                        topic = %self.topic,
                        cursor = %self.position.cursor(),
                        got = %delivery.cursor(),
                        "a delivery skipped ahead of the subscription; reopening from its cursor"
                    );
                    self.body = None;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Waits, then opens the stream again from `resume`. Only final errors come back.
    async fn reopen(&mut self) -> Result<(), Error> {
        loop {
            let backoff = self.source.backoff().delay(self.failures);
            let delay = match (self.failures, self.retry) {
                (0, Some(retry)) => retry,
                (_, retry) => retry.unwrap_or_default().max(backoff),
            };
            let delay = self.asked.take().map_or(delay, |asked| asked.max(delay));
            tokio::time::sleep(delay).await;
            match self.source.open(&self.topic, self.position.cursor()).await {
                Ok(body) => {
                    self.body = Some(body);
                    self.decoder = self.source.decoder();
                    return Ok(());
                }
                Err(error) if error.is_retryable() => {
                    self.failures = self.failures.saturating_add(1);
                    self.asked = error.retry_after();
                    tracing::debug!(topic = %self.topic, %error, "reopening failed; backing off");
                }
                Err(error) => return Err(error),
            }
        }
    }
}
