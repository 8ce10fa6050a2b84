//! The three traits every broker and every transport client implements.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use futures::stream::BoxStream;

use crate::cursor::Cursor;
use crate::error::Result;
use crate::message::{Capabilities, Delivery, Page, Publication, Receipt};
use crate::presence::{Members, Presence};
use crate::topic::Topic;

/// Appends messages to a topic.
///
/// # Contract
///
/// - P1: `publish` MUST return only once the message is stored, with the offset and epoch it
///   was given; a later `fetch` or `subscribe` from before it MUST deliver it.
/// - P2: offsets MUST be dense and increasing per topic: 1, 2, 3, …, also under concurrent
///   publishers, and the order of receipts' offsets is the order readers see.
/// - P3: a payload over the limit MUST fail with [`ErrorKind::TooLarge`](crate::ErrorKind) and
///   store nothing; payloads MUST be stored byte for byte (any bytes, not only UTF-8).
/// - P4: an error MUST say whether a retry can help; a publish that failed with a retryable
///   error MAY have been stored (the caller cannot always tell).
/// - P5: a publication with an [idempotency key](Publication::idempotency_key) that matches a
///   message still retained on the topic MUST NOT be stored again: the answer is the first
///   message's receipt. So a publish retried after a lost answer is stored once.
#[async_trait]
pub trait Publish: Send + Sync {
    /// Appends `publication` to `topic`'s log.
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt>;

    /// Publishes many publications, to one topic or many, in order: each answered with its
    /// receipt or its error, in the order given, one failing without stopping the others.
    /// Publications to one topic are stored in the order given; idempotency keys hold for each
    /// (P5). The outer error is for a batch that could not be sent at all.
    ///
    /// The default publishes one by one; a client that can send them in one request overrides
    /// it.
    async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt>>> {
        let mut answers = Vec::with_capacity(publications.len());
        for (topic, publication) in publications {
            answers.push(self.publish(&topic, publication).await);
        }
        Ok(answers)
    }
}

/// Reads a page of messages: pull, one request, answered at once.
///
/// # Contract
///
/// - F1: `fetch` MUST return at once the messages after `cursor`, in offset order, at most
///   `limit` of them (it MAY return fewer, down to a server-side maximum, but at least one when
///   any exists after `cursor`), and `next`, the `After` cursor to fetch from next time.
/// - F2: `limit` 0 MUST fail with [`ErrorKind::BadRequest`](crate::ErrorKind).
/// - F3: from `Beginning` it MUST start at the oldest retained message; from `Latest` it MUST
///   return no messages and a `next` at the current end.
/// - F4: when messages after `cursor` are no longer retained, the page MUST carry a
///   [`Gap`](crate::Gap) naming exactly the missed offsets, then the oldest retained ones.
/// - F5: a cursor of another epoch MUST give a gap with
///   [`GapReason::EpochChanged`](crate::GapReason), then messages from the start of the
///   current log; never a silent restart.
/// - F6: a topic nobody published to MUST give an empty page, not an error.
#[async_trait]
pub trait Fetch: Send + Sync {
    /// Fetches up to `limit` messages of `topic` after `cursor`.
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page>;

    /// Fetches up to `limit` messages of `topic` before the position `before`, **newest
    /// first**: a page for a UI that shows the latest and pages back into history.
    ///
    /// `before` is a position (`EPOCH-OFFSET`: the messages up to and including that offset),
    /// or `latest` (and `last:N`, `since:TIME`: the newest message); `beginning` has nothing
    /// before it. The page's `next` is where the next page back starts, `After(epoch, 0)` once
    /// the oldest message was given. Where the page reaches past what is retained it carries a
    /// gap naming every older offset that is gone (then `next` is `After(epoch, 0)`); a
    /// position of another epoch gives a gap, then the newest messages of the current log.
    ///
    /// The default reads forward pages and turns them round, so every implementation has it;
    /// one that can do it in one request overrides it.
    async fn fetch_newest_first(
        &self,
        topic: &Topic,
        before: Cursor,
        limit: usize,
    ) -> Result<Page> {
        crate::ext::newest_first(self, topic, before, limit).await
    }
}

/// Follows a topic: push, a stream of deliveries.
///
/// # Contract
///
/// - S1: the subscription MUST yield every message after `cursor`, in offset order, each once,
///   or a [`Gap`](crate::Gap) that says exactly what was missed (the same rules as F3 to F5).
/// - S2: it MUST resume by itself after a dropped connection, from the last cursor it
///   delivered, with no loss and no duplicate while within retention.
/// - S3: an error that a retry cannot fix MUST be yielded once, then the stream ends.
/// - S4: dropping the subscription MUST release what it holds (connections, server state).
/// - S5: subscribing MUST NOT need the topic to exist: a subscription to a topic nobody has
///   published to yet waits for the first message.
#[async_trait]
pub trait Subscribe: Send + Sync {
    /// Subscribes to `topic` from `cursor`.
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription>;

    /// Subscribes on behalf of subscriptions already made: a server's fan-out of a topic,
    /// which writes what it reads to connections that each hold a subscription of their own.
    /// The same stream as [`subscribe`](Self::subscribe)'s, but a broker that counts the
    /// subscribers a publish reaches ([`Receipt::subscribers`](crate::Receipt::subscribers))
    /// does not count it. The default subscribes.
    async fn relay(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
        self.subscribe(topic, cursor).await
    }

    /// Whether a subscription of it may be left unpolled once it has nothing ready, while a
    /// fan-out reads the topic for it ([`SubscriptionSet::park`](crate::SubscriptionSet::park)):
    /// true only where a stream that returned pending holds nothing another reader needs (no
    /// lock over a read in flight). The default is false, and fan-outs then leave its
    /// subscriptions to their connections.
    fn parks(&self) -> bool {
        false
    }

    /// What it knows of its topics, when it can list them and tell when one is published to:
    /// what subscriptions by prefix ([`follow`](crate::follow)) need. `None` (the default)
    /// when it cannot.
    fn directory(&self) -> Option<Arc<dyn crate::many::Directory>> {
        None
    }

    /// Follows many topics on one connection, when this client can: what
    /// [`follow`](crate::follow) asks first. `None` (the default) when it cannot, and `follow`
    /// merges one subscription per topic instead.
    async fn subscribe_many(
        &self,
        request: &crate::many::FollowRequest,
    ) -> Result<Option<crate::many::MultiSubscription>> {
        let _ = request;
        Ok(None)
    }
}

/// Publish, Fetch and Subscribe together: what `connect` returns and brokers are.
pub trait Client: Publish + Fetch + Subscribe {
    /// What this client can do.
    fn capabilities(&self) -> Capabilities;

    /// Who follows its topics, when it can tell: a broker that keeps members, a transport's
    /// client that asks its server. `None` (the default) when it cannot.
    fn presence(&self) -> Option<&dyn Presence> {
        None
    }

    /// Where a server makes and ends the members of topics: a broker that keeps them. `None`
    /// (the default) for a broker without presence and for transports' clients.
    fn members(&self) -> Option<&dyn Members> {
        None
    }
}

/// A stream of [`Delivery`] items that remembers the cursor of the last one it yielded.
///
/// Created by [`Subscribe::subscribe`]; read it with `futures::StreamExt::next`.
pub struct Subscription {
    topic: Topic,
    cursor: Cursor,
    inner: BoxStream<'static, Result<Delivery>>,
}

impl Subscription {
    /// Wraps a stream that starts reading `topic` at `cursor`.
    pub fn new(
        topic: Topic,
        cursor: Cursor,
        stream: impl Stream<Item = Result<Delivery>> + Send + 'static,
    ) -> Self {
        Self { topic, cursor, inner: Box::pin(stream) }
    }

    /// The topic followed.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The cursor after the last delivery yielded (the start cursor before any).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(delivery))) = &polled {
            self.cursor = delivery.cursor();
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// The source of truth a server serves: a broker (the [`MemoryBroker`](crate::MemoryBroker),
/// a Redis-backed one, one of your own). It has a client's three operations — that is what
/// lets the same code and the same conformance suite run against a broker in-process or a
/// transport over the network — and the name says which side of the wire it is on: servers take
/// an `Arc<dyn Broker>`, applications hold an `Arc<dyn Client>`. Every [`Client`] is a broker,
/// and an `Arc<dyn Broker>` is an `Arc<dyn Client>` where one is asked for.
pub trait Broker: Client {}

impl<T: Client + ?Sized> Broker for T {}

impl fmt::Debug for dyn Client + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("name", &self.capabilities().name).finish_non_exhaustive()
    }
}

impl fmt::Debug for dyn Broker + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker").field("name", &self.capabilities().name).finish_non_exhaustive()
    }
}

macro_rules! forward {
    ($($wrapper:ident),*) => {$(
        #[async_trait]
        impl<T: Publish + ?Sized> Publish for $wrapper<T> {
            async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt> {
                (**self).publish(topic, publication).await
            }

            async fn publish_many(
                &self,
                publications: Vec<(Topic, Publication)>,
            ) -> Result<Vec<Result<Receipt>>> {
                (**self).publish_many(publications).await
            }
        }

        #[async_trait]
        impl<T: Fetch + ?Sized> Fetch for $wrapper<T> {
            async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page> {
                (**self).fetch(topic, cursor, limit).await
            }

            async fn fetch_newest_first(
                &self,
                topic: &Topic,
                before: Cursor,
                limit: usize,
            ) -> Result<Page> {
                (**self).fetch_newest_first(topic, before, limit).await
            }
        }

        #[async_trait]
        impl<T: Subscribe + ?Sized> Subscribe for $wrapper<T> {
            async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
                (**self).subscribe(topic, cursor).await
            }

            async fn relay(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription> {
                (**self).relay(topic, cursor).await
            }

            fn parks(&self) -> bool {
                (**self).parks()
            }

            fn directory(&self) -> Option<Arc<dyn crate::many::Directory>> {
                (**self).directory()
            }

            async fn subscribe_many(
                &self,
                request: &crate::many::FollowRequest,
            ) -> Result<Option<crate::many::MultiSubscription>> {
                (**self).subscribe_many(request).await
            }
        }

        impl<T: Client + ?Sized> Client for $wrapper<T> {
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            fn presence(&self) -> Option<&dyn Presence> {
                (**self).presence()
            }

            fn members(&self) -> Option<&dyn Members> {
                (**self).members()
            }
        }
    )*};
}

forward!(Arc, Box);

/// How a transport's client is made from its settings: what a registry of transports (the
/// `pushpull` facade's `Registry`) needs to pick the transport by name from configuration.
///
/// The settings are the transport's own section of a client configuration (`[sse]`, `[ws]`,
/// or a custom transport's), with the server's `url` filled in.
pub trait Connect {
    /// The transport's name in configuration (`transport = "…"`, and its settings section).
    const NAME: &'static str;
    /// Whether an automatic choice of transport may try it: true for a client that subscribes
    /// by reaching the server, false for one the server must reach (a webhook receiver).
    const PROBES: bool = true;
    /// The transport's client settings, all optional (`#[serde(default)]`) but `url`.
    type Config: serde::de::DeserializeOwned;
    /// A client configured by `config`.
    fn connect(config: Self::Config) -> Result<Arc<dyn Client>>;

    /// Puts the application's token (one that a [`TokenSource`](crate::TokenSource) may
    /// renew) into `config`. The default refuses: a transport that sends no token says so
    /// rather than connecting without it.
    fn set_token(config: &mut Self::Config, token: crate::BearerToken) -> Result<()> {
        let _ = (config, token);
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("transport {:?} does not send tokens", Self::NAME),
        ))
    }
}

/// Implements [`Connect`] for a client made by `new(config) -> Result<Self>` whose settings
/// keep the bearer token it sends in a `token` field: what every built-in transport's client
/// is. `probes = false` marks a client `auto` may not pick (one the server must reach).
///
/// ```ignore
/// pushpull_core::connect_by_new!(SseClient, ClientConfig, crate::NAME);
/// ```
#[macro_export]
macro_rules! connect_by_new {
    ($client:ty, $config:ty, $name:expr $(, probes = $probes:expr)?) => {
        impl $crate::Connect for $client {
            const NAME: &'static str = $name;
            $(const PROBES: bool = $probes;)?
            type Config = $config;

            fn connect(config: $config) -> $crate::Result<std::sync::Arc<dyn $crate::Client>> {
                Ok(std::sync::Arc::new(<$client>::new(config)?))
            }

            fn set_token(config: &mut $config, token: $crate::BearerToken) -> $crate::Result<()> {
                config.token = token;
                Ok(())
            }
        }
    };
}
