//! A conformance harness for HTTP transports: a real server on 127.0.0.1 over a fresh memory
//! broker, reached through a [`ChaosProxy`] so the suite can sever connections and restart the
//! server behind the client's back.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pushpull_core::{Broker, Client, Error, ErrorKind, MemoryBroker};
use pushpull_http::{Router, RunningServer, ServeConfig, spawn};

use crate::{ChaosProxy, Fixture, Harness, Limits, Skip, memory_config};
use tokio::net::TcpListener;

type Mount = Arc<dyn Fn(Arc<dyn Broker>) -> Router + Send + Sync>;
type Connect = Arc<dyn Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync>;

/// Starts `mount(broker)` on 127.0.0.1 and gives the suite `connect(base_url)` as the client.
#[derive(Clone)]
pub struct HttpHarness {
    mount: Mount,
    connect: Connect,
}

impl HttpHarness {
    /// A harness for the transport whose server routes `mount` builds and whose client
    /// `connect` makes from a base URL.
    pub fn new(
        mount: impl Fn(Arc<dyn Broker>) -> Router + Send + Sync + 'static,
        connect: impl Fn(&str) -> Result<Arc<dyn Client>, Error> + Send + Sync + 'static,
    ) -> Self {
        Self { mount: Arc::new(mount), connect: Arc::new(connect) }
    }

    async fn serve(&self, limits: &Limits) -> Result<(RunningServer, MemoryBroker), Error> {
        let broker = MemoryBroker::with_config(memory_config(limits))?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(io_error)?;
        let router = (self.mount)(Arc::new(broker.clone()));
        let server = spawn(listener, router, ServeConfig::default()).map_err(io_error)?;
        Ok((server, broker))
    }
}

fn io_error(err: std::io::Error) -> Error {
    Error::new(ErrorKind::Connect, format!("cannot start the test server: {err}")).with_source(err)
}

#[async_trait]
impl Harness for HttpHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let server = self.serve(&limits).await?;
        let proxy = ChaosProxy::start(server.0.local_addr()).await.map_err(io_error)?;
        let client = (self.connect)(&format!("http://{}", proxy.addr()))?;
        Ok(Box::new(HttpFixture {
            harness: self.clone(),
            limits,
            server: Mutex::new(Some(server)),
            proxy,
            client,
        }))
    }
}

struct HttpFixture {
    harness: HttpHarness,
    limits: Limits,
    server: Mutex<Option<(RunningServer, MemoryBroker)>>,
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
        let fresh = self
            .harness
            .serve(&self.limits)
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
        Ok(server.as_ref().map_or(0, |(_, broker)| broker.subscriber_count()))
    }
}
