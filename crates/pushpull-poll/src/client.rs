//! The client half: Publish and Fetch by request, Subscribe by polling.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream;
use http::HeaderValue;
use pushpull_core::{
    Capabilities, Cursor, Delivery, Error, ErrorKind, Fetch, FollowRequest, MultiSubscription,
    Page, Publication, Publish, Receipt, Subscribe, Subscription, Topic,
};
use pushpull_http::pages::request_page;
use pushpull_http::{
    HttpClient, HttpClientConfig, ManyQuery, PageAnswer, fetch_page, request_many_page,
};

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
        let mut http_config = HttpClientConfig::endpoint(
            config.request_timeout,
            config.ca_file.clone(),
            config.token.clone(),
        );
        http_config.accept_gzip = config.gzip;
        let http = HttpClient::new(&config.url, name, http_config)?;
        Ok(Self { http, config, hold, name })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
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

    async fn fetch_newest_first(
        &self,
        topic: &Topic,
        before: Cursor,
        limit: usize,
    ) -> Result<Page, Error> {
        pushpull_http::fetch_newest_first_page(&self.http, topic, before, limit).await
    }
}

#[async_trait]
impl Subscribe for PollClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let what = Polled::One { topic: topic.clone(), cursor, etag: None };
        let poller = Poller::start(self.clone(), what).await?;
        let Polled::One { cursor: start, .. } = &poller.what else { unreachable!("one topic") };
        let start = *start;
        Ok(Subscription::new(topic.clone(), start, stream::unfold(poller, Poller::next)))
    }

    /// Polls every topic of `request` with one request (`GET /v1/messages?topic=…`), resumed
    /// by the cursor set each page ends at.
    async fn subscribe_many(
        &self,
        request: &FollowRequest,
    ) -> Result<Option<MultiSubscription>, Error> {
        let poller = Poller::start(self.clone(), Polled::Many(ManyQuery::new(request))).await?;
        let Polled::Many(query) = &poller.what else { unreachable!("many topics") };
        // Where each topic stood before the first page, whose deliveries are yet to be handed
        // over.
        let cursors = query.positions().before(&poller.ready);
        Ok(Some(MultiSubscription::new(cursors, stream::unfold(poller, Poller::next))))
    }
}

impl pushpull_core::Client for PollClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(self.name)
    }

    fn presence(&self) -> Option<&dyn pushpull_core::Presence> {
        Some(&self.http)
    }
}

/// What a poller polls: one topic's page route, or the page route of many topics.
enum Polled {
    One {
        topic: Topic,
        /// Where the next poll starts: after the last delivery handed to `ready`.
        cursor: Cursor,
        etag: Option<HeaderValue>,
    },
    Many(ManyQuery),
}

impl std::fmt::Display for Polled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Polled::One { topic, .. } => write!(f, "{topic}"),
            Polled::Many(query) => write!(f, "{query}"),
        }
    }
}

/// What one poll brought.
enum Answer {
    Page { deliveries: Vec<Delivery>, full: bool, hint: Option<Duration>, held: bool },
    NotModified { hint: Option<Duration>, held: bool },
}

/// One subscription's polling loop.
struct Poller {
    client: PollClient,
    what: Polled,
    interval: Duration,
    ready: VecDeque<Delivery>,
    wait_before_next: bool,
    failures: u32,
    finished: bool,
    /// Its id as a member of its topics' presence, sent with every poll.
    member: String,
}

impl Poller {
    /// Polls once, now: it resolves `latest`, `beginning` and the other starts to a position,
    /// and a bad topic or cursor fails here rather than in the stream.
    async fn start(client: PollClient, what: Polled) -> Result<Self, Error> {
        // A long-polling client asks with `wait=0`: answered at once, and the answer says
        // whether the server can hold requests at all.
        let probe = client.hold.map(|_| Duration::ZERO);
        let mut poller = Poller {
            client,
            what,
            interval: Duration::ZERO,
            ready: VecDeque::new(),
            wait_before_next: false,
            failures: 0,
            finished: false,
            member: pushpull_http::connection_id(),
        };
        let (deliveries, full, hint) = match poller.poll(probe).await? {
            Answer::Page { held: false, .. } | Answer::NotModified { held: false, .. }
                if poller.client.hold.is_some() =>
            {
                return Err(poller.client.http.error(
                    ErrorKind::Unsupported,
                    format!(
                        "{} does not hold requests: long polling is not enabled there (short \
                         polling is)",
                        poller.client.http.url("")
                    ),
                ));
            }
            Answer::Page { deliveries, full, hint, .. } => (deliveries, full, hint),
            Answer::NotModified { .. } => {
                return Err(poller
                    .client
                    .http
                    .error(ErrorKind::Protocol, "304 to a request without If-None-Match"));
            }
        };
        poller.interval = poller.client.interval(hint);
        poller.ready.extend(deliveries);
        // A full page means more is likely waiting: poll again at once. A long-polling
        // subscription holds its next request on the server: no pause first either.
        poller.wait_before_next = !full && poller.client.hold.is_none();
        Ok(poller)
    }

    /// One poll from where it stands, which moves it past what the answer holds.
    async fn poll(&mut self, wait: Option<Duration>) -> Result<Answer, Error> {
        let limit = self.client.config.page_limit;
        match &mut self.what {
            Polled::One { topic, cursor, etag } => {
                let answer = request_page(
                    &self.client.http,
                    topic,
                    *cursor,
                    limit,
                    etag.as_ref(),
                    wait,
                    Some(&self.member),
                )
                .await?;
                Ok(match answer {
                    PageAnswer::Page { page, etag: tag, hint, held } => {
                        *etag = tag;
                        *cursor = page.next;
                        let full = page.messages.len() >= limit;
                        Answer::Page {
                            deliveries: page.into_deliveries().collect(),
                            full,
                            hint,
                            held,
                        }
                    }
                    PageAnswer::NotModified { hint, held } => Answer::NotModified { hint, held },
                })
            }
            Polled::Many(query) => {
                let answer = request_many_page(
                    &self.client.http,
                    &query.query(),
                    limit,
                    wait,
                    Some(&self.member),
                )
                .await?;
                let next = query.parse(&answer.next).map_err(|e| {
                    self.client.http.error(
                        ErrorKind::Protocol,
                        format!("the page's next cursor set: {}", e.message()),
                    )
                })?;
                query.replace(next);
                let messages =
                    answer.deliveries.iter().filter(|d| matches!(d, Delivery::Message(_))).count();
                Ok(Answer::Page {
                    deliveries: answer.deliveries,
                    full: messages >= limit,
                    hint: answer.hint,
                    held: answer.held,
                })
            }
        }
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
                if this.wait_before_next {
                    tokio::time::sleep(this.interval).await;
                }
                let hold = this.client.hold;
                match this.poll(hold).await {
                    Ok(Answer::Page { deliveries, full, hint, held }) => {
                        this.failures = 0;
                        this.interval = this.client.interval(hint);
                        this.ready.extend(deliveries);
                        // A full page means more is likely waiting; a held request already
                        // waited on the server: ask again at once.
                        this.wait_before_next = !(full || (hold.is_some() && held));
                    }
                    Ok(Answer::NotModified { hint, held }) => {
                        this.failures = 0;
                        this.interval = this.client.interval(hint);
                        this.wait_before_next = !(hold.is_some() && held);
                    }
                    Err(error) if !error.is_retryable() => {
                        this.finished = true;
                        return Some((Err(error), this));
                    }
                    Err(error) => {
                        let backoff = this.client.config.backoff.delay(this.failures);
                        let delay = error.retry_after().map_or(backoff, |asked| asked.max(backoff));
                        this.failures = this.failures.saturating_add(1);
                        tracing::debug!(polled = %this.what, %error, ?delay, "poll failed; retrying");
                        tokio::time::sleep(delay).await;
                        this.wait_before_next = false;
                    }
                }
            }
        }
    }
}

pushpull_core::connect_by_new!(PollClient, ClientConfig, crate::NAME);
