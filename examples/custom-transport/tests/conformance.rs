//! The line transport against the whole conformance suite, over a real server on 127.0.0.1
//! reached through the suite's chaos proxy, exactly as the built-in transports are judged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use custom_transport::{LineClient, LineConfig, LineServer};
use pushpull_core::{Backoff, Client, Error, ErrorKind, MemoryBroker};
use pushpull_testkit::{ChaosProxy, Fixture, Harness, Limits, Skip, memory_config};

struct LineHarness;

struct LineFixture {
    limits: Limits,
    server: Mutex<(LineServer, MemoryBroker)>,
    proxy: ChaosProxy,
    client: Arc<dyn Client>,
}

async fn serve(limits: &Limits) -> Result<(LineServer, MemoryBroker), Error> {
    let broker = MemoryBroker::with_config(memory_config(limits))?;
    let io = |e: std::io::Error| Error::new(ErrorKind::Connect, e.to_string());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(io)?;
    let server = LineServer::spawn(listener, Arc::new(broker.clone())).map_err(io)?;
    Ok((server, broker))
}

#[async_trait]
impl Harness for LineHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let (server, broker) = serve(&limits).await?;
        let proxy = ChaosProxy::start(server.local_addr())
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, e.to_string()))?;
        let config = LineConfig {
            url: format!("tcp://{}", proxy.addr()),
            backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(500)),
            ..LineConfig::default()
        };
        let client = Arc::new(LineClient::new(config)?);
        Ok(Box::new(LineFixture { limits, server: Mutex::new((server, broker)), proxy, client }))
    }
}

#[async_trait]
impl Fixture for LineFixture {
    fn client(&self) -> Arc<dyn Client> {
        self.client.clone()
    }

    async fn sever(&self) -> Result<(), Skip> {
        self.proxy.sever();
        Ok(())
    }

    async fn restart(&self) -> Result<(), Skip> {
        let fresh = serve(&self.limits).await.map_err(|e| Skip(e.to_string()))?;
        self.proxy.redirect(fresh.0.local_addr());
        *self.server.lock().expect("server lock") = fresh;
        Ok(())
    }

    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        Ok(self.server.lock().expect("server lock").1.subscriber_count())
    }
}

pushpull_testkit::conformance!(LineHarness);
