//! The client half: Publish and Fetch by request, Subscribe by polling.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream;
use http::HeaderValue;
use pushpull_core::{
    Capabilities, Cursor, Delivery, Error, ErrorKind, Fetch, Page, Publication, Publish, Receipt,
    Subscribe, Subscription, Topic,
};
use pushpull_http::pages::request_page;
use pushpull_http::{HttpClient, HttpClientConfig, PageAnswer, fetch_page};

use crate::NAME;
use crate::config::ClientConfig;

/// A client of a polling server. Cheap to clone; clones share connections.
///
/// A subscription polls `GET …/messages` from its cursor: at once while pages come back full,
/// else after the poll interval (the server's hint when it gives one). It sends `If-None-Match`
/// so an unchanged topic costs a bodiless 304. After a failure it retries with backoff (or
/// after `Retry-After`) from the last cursor it delivered, so nothing is lost or repeated.
#[derive(Clone, Debug)]
pub struct PollClient {
    http: HttpClient,
    config: ClientConfig,
    /// Long polling: how long each subscription poll asks the server to hold.
    hold: Option<Duration>,
    name: &'static str,
}

impl PollClient {
    /// A client for the server at `config.url`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        Self::build(config, None, NAME)
    }

    /// A long-polling client: each subscription poll asks the server to hold the request for
    /// up to `wait` until a message arrives, and asks again at once when answered. Errors and
    /// capabilities carry `name`. Subscribing to a server that cannot hold (its first answer
    /// lacks the `Pushpull-Wait-Ms` header) fails with an `unsupported` error.
    pub fn holding(
        config: ClientConfig,
        wait: Duration,
        name: &'static str,
    ) -> Result<Self, Error> {
        if wait.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{name}.wait must be more than zero"),
            )
            .with_transport(name));
        }
        Self::build(config, Some(wait), name)
    }

    fn build(
        config: ClientConfig,
        hold: Option<Duration>,
        name: &'static str,
    ) -> Result<Self, Error> {
        if config.page_limit == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{name}.page_limit must be at least 1"),
            )
            .with_transport(name));
        }
        if config.poll_interval.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{name}.poll_interval must be more than zero"),
            )
            .with_transport(name));
        }
        let http_config = HttpClientConfig::endpoint(
            config.request_timeout,
            config.ca_file.clone(),
            config.token.clone(),
        );
        let http = HttpClient::new(&config.url, name, http_config)?;
        Ok(Self { http, config, hold, name })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    async fn poll(
        &self,
        topic: &Topic,
        cursor: Cursor,
        limit: usize,
        etag: Option<&HeaderValue>,
        wait: Option<Duration>,
    ) -> Result<PageAnswer, Error> {
        request_page(&self.http, topic, cursor, limit, etag, wait).await
    }

    fn interval(&self, hint: Option<Duration>) -> Duration {
        match hint {
            Some(hint) if self.config.honour_server_hint => hint,
            _ => self.config.poll_interval,
        }
    }
}

#[async_trait]
impl Publish for PollClient {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.http.publish(topic, publication).await
    }

    async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        self.http.publish_many(publications).await
    }
}

#[async_trait]
impl Fetch for PollClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        fetch_page(&self.http, topic, cursor, limit).await
    }
}

#[async_trait]
impl Subscribe for PollClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        // The first poll happens now: it resolves `Latest` and `Beginning` to a position, and
        // a bad topic or cursor fails here rather than in the stream.
        let limit = self.config.page_limit;
        // A long-polling client asks with `wait=0`: answered at once, and the answer says
        // whether the server can hold requests at all.
        let probe = self.hold.map(|_| Duration::ZERO);
        let first = self.poll(topic, cursor, limit, None, probe).await?;
        if let PageAnswer::Page { held: false, .. } = first
            && self.hold.is_some()
        {
            return Err(self.http.error(
                ErrorKind::Unsupported,
                format!(
                    "{} does not hold requests: long polling is not enabled there (short \
                         polling is)",
                    self.http.url("")
                ),
            ));
        }
        let PageAnswer::Page { page, etag, hint, .. } = first else {
            return Err(self
                .http
                .error(ErrorKind::Protocol, "304 to a request without If-None-Match"));
        };
        let mut poller = Poller {
            client: self.clone(),
            topic: topic.clone(),
            cursor: page.next,
            etag,
            interval: self.interval(hint),
            ready: VecDeque::new(),
            wait_before_next: false,
            failures: 0,
            finished: false,
        };
        poller.accept(page, limit);
        // A long-polling subscription holds its next request on the server: no pause first.
        poller.wait_before_next &= self.hold.is_none();
        let start = poller.cursor;
        Ok(Subscription::new(topic.clone(), start, stream::unfold(poller, Poller::next)))
    }
}

impl pushpull_core::Client for PollClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(self.name)
    }
}

/// One subscription's polling loop.
struct Poller {
    client: PollClient,
    topic: Topic,
    /// Where the next poll starts: after the last delivery handed to `ready`.
    cursor: Cursor,
    etag: Option<HeaderValue>,
    interval: Duration,
    ready: VecDeque<Delivery>,
    wait_before_next: bool,
    failures: u32,
    finished: bool,
}

impl Poller {
    fn accept(&mut self, page: Page, limit: usize) {
        // A full page means more is likely waiting: poll again at once.
        self.wait_before_next = page.messages.len() < limit;
        self.cursor = page.next;
        self.ready.extend(page.into_deliveries());
    }

    async fn next(mut self) -> Option<(Result<Delivery, Error>, Self)> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Some((Ok(delivery), self));
            }
            if self.finished {
                return None;
            }
            if self.wait_before_next {
                tokio::time::sleep(self.interval).await;
            }
            let limit = self.client.config.page_limit;
            let hold = self.client.hold;
            match self.client.poll(&self.topic, self.cursor, limit, self.etag.as_ref(), hold).await
            {
                Ok(PageAnswer::Page { page, etag, hint, held }) => {
                    self.failures = 0;
                    self.etag = etag;
                    self.interval = self.client.interval(hint);
                    self.accept(page, limit);
                    // A held request already waited on the server: ask again at once.
                    self.wait_before_next &= !(hold.is_some() && held);
                }
                Ok(PageAnswer::NotModified { hint, held }) => {
                    self.failures = 0;
                    self.interval = self.client.interval(hint);
                    self.wait_before_next = !(hold.is_some() && held);
                }
                Err(error) if !error.is_retryable() => {
                    self.finished = true;
                    return Some((Err(error), self));
                }
                Err(error) => {
                    let backoff = self.client.config.backoff.delay(self.failures);
                    let delay = error.retry_after().map_or(backoff, |asked| asked.max(backoff));
                    self.failures = self.failures.saturating_add(1);
                    tracing::debug!(topic = %self.topic, %error, ?delay, "poll failed; retrying");
                    tokio::time::sleep(delay).await;
                    self.wait_before_next = false;
                }
            }
        }
    }
}

pushpull_core::connect_by_new!(PollClient, ClientConfig, crate::NAME);
