//! The client half: the polling client, asking the server to hold each poll.

use async_trait::async_trait;
use pushpull_core::{
    Capabilities, Cursor, Error, Fetch, FollowRequest, MultiSubscription, Page, Publication,
    Publish, Receipt, Subscribe, Subscription, Topic,
};

use crate::NAME;
use crate::config::ClientConfig;

/// A client of a long-polling server. Cheap to clone; clones share connections.
///
/// `publish` and `fetch` answer at once. A subscription sends the page request with
/// `wait`, and asks again the moment it is answered, from the cursor the answer ends at, so a
/// message published between two requests is never missed.
#[derive(Clone, Debug)]
pub struct LongpollClient {
    inner: pushpull_poll::PollClient,
}

impl LongpollClient {
    /// A client for the server at `config.url`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let mut poll = pushpull_poll::ClientConfig::default();
        poll.url = config.url;
        poll.ca_file = config.ca_file;
        poll.token = config.token;
        poll.page_limit = config.page_limit;
        poll.request_timeout = config.request_timeout;
        poll.backoff = config.backoff;
        poll.gzip = config.gzip;
        Ok(Self { inner: pushpull_poll::PollClient::holding(poll, config.wait, NAME)? })
    }
}

#[async_trait]
impl Publish for LongpollClient {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.inner.publish(topic, publication).await
    }

    async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        self.inner.publish_many(publications).await
    }
}

#[async_trait]
impl Fetch for LongpollClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        self.inner.fetch(topic, cursor, limit).await
    }

    async fn fetch_newest_first(
        &self,
        topic: &Topic,
        before: Cursor,
        limit: usize,
    ) -> Result<Page, Error> {
        self.inner.fetch_newest_first(topic, before, limit).await
    }
}

#[async_trait]
impl Subscribe for LongpollClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        self.inner.subscribe(topic, cursor).await
    }

    async fn subscribe_many(
        &self,
        request: &FollowRequest,
    ) -> Result<Option<MultiSubscription>, Error> {
        self.inner.subscribe_many(request).await
    }
}

impl pushpull_core::Client for LongpollClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME)
    }

    fn presence(&self) -> Option<&dyn pushpull_core::Presence> {
        self.inner.presence()
    }
}

pushpull_core::connect_by_new!(LongpollClient, ClientConfig, crate::NAME);
