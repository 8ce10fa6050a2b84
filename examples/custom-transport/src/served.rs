//! The server half registered by name: `[transports.line]` in a pushpull server's
//! configuration serves the line protocol on its own listener, beside the HTTP one.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use pushpull_core::{Client, Error, ErrorKind};
use pushpull_http::{Context, Mount, OwnListener, Shutdown, TransportServer};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// `[transports.line]`: where the line protocol listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineServerConfig {
    /// The address to listen on (port 0 takes a free one; the server's health route says
    /// which, under `listeners.line`).
    pub listen: SocketAddr,
}

impl Default for LineServerConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 7071)) }
    }
}

/// The line transport as a pushpull server serves it: `registry.register_server::<LineTransport>()`.
#[derive(Debug)]
pub struct LineTransport {
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    addr: SocketAddr,
    broker: Arc<dyn Client>,
}

impl TransportServer for LineTransport {
    const NAME: &'static str = crate::NAME;
    type Config = LineServerConfig;

    /// Binds at once, so that an address in use is an error when the server starts.
    fn build(context: &Context, config: LineServerConfig) -> Result<Self, Error> {
        let bound = std::net::TcpListener::bind(config.listen)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("line.listen: cannot listen on {}: {e}", config.listen),
                )
            })?;
        let addr = bound.local_addr().map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        let broker: Arc<dyn Client> = context.broker.clone();
        Ok(Self { listener: std::sync::Mutex::new(Some(bound)), addr, broker })
    }

    fn mount(&self) -> Mount {
        let listener = self.listener.lock().expect("listener lock").take();
        match listener {
            Some(listener) => Mount::default().with_listener(LineListener {
                listener,
                addr: self.addr,
                broker: self.broker.clone(),
            }),
            None => Mount::default(),
        }
    }
}

/// The bound listener, run by the server beside its HTTP one.
struct LineListener {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    broker: Arc<dyn Client>,
}

impl OwnListener for LineListener {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn run(self: Box<Self>, mut shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(self.listener) else { return };
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            while connections.try_join_next().is_some() {}
                            connections.spawn(crate::server::connection(stream, self.broker.clone()));
                        }
                        Err(error) => {
                            // Out of file descriptors, say: wait a little rather than spin.
                            tracing::warn!(%error, "line: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    },
                    () = shutdown.wait() => break,
                }
            }
            // Dropping the set closes every connection.
            connections.shutdown().await;
        })
    }
}
