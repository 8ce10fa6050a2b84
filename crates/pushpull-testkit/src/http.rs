//! A conformance harness for HTTP transports: a real server on 127.0.0.1 over a fresh broker
//! (the memory broker, or with the `redis` feature a Redis broker on a redis-server of the
//! fixture's own), reached through a [`ChaosProxy`] so the suite can sever connections and
//! restart the server behind the client's back.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pushpull_core::{Broker, Client, Error, ErrorKind, MemoryBroker};
use pushpull_http::{Router, RunningServer, ServeConfig, spawn};
use tokio::net::TcpListener;

use crate::{ChaosProxy, Fixture, Harness, Limits, Skip, memory_config};

type Mount = Arc<dyn Fn(Arc<dyn Broker>) -> Router + Send + Sync>;
type Connect = Arc<dyn Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync>;
/// Reads how many subscriptions the server's broker serves.
type Count = Box<dyn Fn() -> usize + Send + Sync>;

/// Which broker the harness's servers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    Memory,
    #[cfg(feature = "redis")]
    Redis,
}

/// Starts `mount(broker)` on 127.0.0.1 and gives the suite `connect(base_url)` as the client.
#[derive(Clone)]
pub struct HttpHarness {
    mount: Mount,
    connect: Connect,
    backing: Backing,
}

impl HttpHarness {
    /// A harness for the transport whose server routes `mount` builds and whose client
    /// `connect` makes from a base URL, over the memory broker.
    pub fn new(
        mount: impl Fn(Arc<dyn Broker>) -> Router + Send + Sync + 'static,
        connect: impl Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync + 'static,
    ) -> Self {
        Self { mount: Arc::new(mount), connect: Arc::new(connect), backing: Backing::Memory }
    }

    /// The same harness over the Redis broker: each fixture starts a redis-server of its own,
    /// and a restart empties it (as a Redis restarted without persistence would).
    #[cfg(feature = "redis")]
    pub fn over_redis(mut self) -> Self {
        self.backing = Backing::Redis;
        self
    }

    async fn serve(
        &self,
        limits: &Limits,
        backend: &Backend,
    ) -> Result<(RunningServer, Count), Error> {
        let (broker, count): (Arc<dyn Broker>, Count) = match backend {
            Backend::Memory => {
                let broker = MemoryBroker::with_config(memory_config(limits))?;
                let counted = broker.clone();
                (Arc::new(broker), Box::new(move || counted.subscriber_count()))
            }
            #[cfg(feature = "redis")]
            Backend::Redis(server) => {
                let config = crate::redis::redis_config(server.url(), limits);
                let broker = pushpull_redis::RedisBroker::new(config)?;
                let counted = broker.clone();
                (Arc::new(broker), Box::new(move || counted.subscriber_count()))
            }
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(io_error)?;
        let router = (self.mount)(broker);
        let server = spawn(listener, router, ServeConfig::default()).map_err(io_error)?;
        Ok((server, count))
    }
}

/// What a fixture's servers store their logs in.
enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisServer),
}

fn io_error(err: std::io::Error) -> Error {
    Error::new(ErrorKind::Connect, format!("cannot start the test server: {err}")).with_source(err)
}

#[async_trait]
impl Harness for HttpHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let backend = match self.backing {
            Backing::Memory => Backend::Memory,
            #[cfg(feature = "redis")]
            Backing::Redis => Backend::Redis(crate::redis::RedisServer::start()?),
        };
        let server = self.serve(&limits, &backend).await?;
        let proxy = ChaosProxy::start(server.0.local_addr()).await.map_err(io_error)?;
        let client = (self.connect)(&format!("http://{}", proxy.addr()))?;
        Ok(Box::new(HttpFixture {
            harness: self.clone(),
            limits,
            backend,
            server: Mutex::new(Some(server)),
            proxy,
            client,
        }))
    }
}

struct HttpFixture {
    harness: HttpHarness,
    limits: Limits,
    backend: Backend,
    server: Mutex<Option<(RunningServer, Count)>>,
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
        #[cfg(feature = "redis")]
        if let Backend::Redis(server) = &self.backend {
            server.command(&["FLUSHALL"]).await.map_err(|e| Skip(e.to_string()))?;
        }
        let fresh = self
            .harness
            .serve(&self.limits, &self.backend)
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
        Ok(server.as_ref().map_or(0, |(_, count)| count()))
    }
}
