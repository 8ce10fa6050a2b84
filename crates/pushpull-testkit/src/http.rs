//! A conformance harness for HTTP transports: a real server on 127.0.0.1 over a fresh broker
//! (the memory broker; Redis, on a redis-server of the fixture's own; or any other a
//! [`BrokerHarness`] makes), reached through a [`ChaosProxy`] so the suite can sever connections and
//! restart the server behind the client's back.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pushpull_core::{Broker, Client, Error, ErrorKind};
use pushpull_http::{Router, RunningServer, ServeConfig, spawn};
use tokio::net::TcpListener;

use crate::{
    BrokerHarness, BrokerStore, ChaosProxy, Fixture, Harness, Limits, MemoryBrokers, Skip,
    SubscriptionCount,
};

type Mount = Arc<dyn Fn(Arc<dyn Broker>) -> Router + Send + Sync>;
type Connect = Arc<dyn Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync>;

/// Starts `mount(broker)` on 127.0.0.1 and gives the suite `connect(base_url)` as the client,
/// over the brokers of a [`BrokerHarness`] (memory brokers unless told).
#[derive(Clone)]
pub struct HttpHarness {
    mount: Mount,
    connect: Connect,
    brokers: Arc<dyn BrokerHarness>,
}

impl HttpHarness {
    /// A harness for the transport whose server routes `mount` builds and whose client
    /// `connect` makes from a base URL, over the memory broker.
    pub fn new(
        mount: impl Fn(Arc<dyn Broker>) -> Router + Send + Sync + 'static,
        connect: impl Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            mount: Arc::new(mount),
            connect: Arc::new(connect),
            brokers: Arc::new(MemoryBrokers),
        }
    }

    /// The same harness over the brokers `brokers` makes: how a broker of one's own runs every
    /// transport's suite.
    pub fn over(mut self, brokers: impl BrokerHarness) -> Self {
        self.brokers = Arc::new(brokers);
        self
    }

    /// The same harness over the Redis broker: each fixture starts a redis-server of its own,
    /// and a restart empties it (as a Redis restarted without persistence would).
    #[cfg(feature = "redis")]
    pub fn over_redis(self) -> Self {
        self.over(crate::redis::RedisBrokers)
    }

    /// The same harness over the Redis broker on a Redis Cluster shared by the binary's
    /// cases, each fixture under a key prefix of its own.
    #[cfg(feature = "redis")]
    pub fn over_redis_cluster(self) -> Self {
        self.over(crate::redis::RedisClusterBrokers)
    }

    async fn serve(
        &self,
        limits: &Limits,
        store: &dyn BrokerStore,
    ) -> Result<(RunningServer, Option<SubscriptionCount>), Error> {
        let opened = store.open(limits)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(io_error)?;
        let router = (self.mount)(opened.broker);
        let server = spawn(listener, router, ServeConfig::default()).map_err(io_error)?;
        Ok((server, opened.subscriptions))
    }
}

fn io_error(err: std::io::Error) -> Error {
    Error::new(ErrorKind::Connect, format!("cannot start the test server: {err}")).with_source(err)
}

#[async_trait]
impl Harness for HttpHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let store = self.brokers.store().await?;
        let server = self.serve(&limits, &*store).await?;
        let proxy = ChaosProxy::start(server.0.local_addr()).await.map_err(io_error)?;
        let client = (self.connect)(&format!("http://{}", proxy.addr()))?;
        Ok(Box::new(HttpFixture {
            harness: self.clone(),
            limits,
            store,
            server: Mutex::new(Some(server)),
            proxy,
            client,
        }))
    }
}

struct HttpFixture {
    harness: HttpHarness,
    limits: Limits,
    store: Box<dyn BrokerStore>,
    server: Mutex<Option<(RunningServer, Option<SubscriptionCount>)>>,
    proxy: ChaosProxy,
    client: Arc<dyn Client>,
}

#[async_trait]
impl Fixture for HttpFixture {
    fn client(&self) -> Arc<dyn Client> {
        self.client.clone()
    }

    async fn sever(&self) -> Result<(), Skip> {
        self.proxy.sever();
        Ok(())
    }

    async fn restart(&self) -> Result<(), Skip> {
        self.store.restart().await.map_err(|e| Skip(format!("cannot restart: {e}")))?;
        let fresh = self
            .harness
            .serve(&self.limits, &*self.store)
            .await
            .map_err(|e| Skip(format!("cannot restart: {e}")))?;
        self.proxy.redirect(fresh.0.local_addr());
        // The old server and its broker go away, as in a real restart.
        let old = self.server.lock().expect("server lock").replace(fresh);
        drop(old);
        Ok(())
    }

    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        let server = self.server.lock().expect("server lock");
        match server.as_ref() {
            None => Ok(0),
            Some((_, Some(count))) => Ok(count()),
            Some((_, None)) => Err(Skip("the broker does not count its subscriptions".into())),
        }
    }
}
