//! What a transport or broker provides so the suite can run against it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pushpull_core::{Client, Error};

/// Server-side limits a case asks for when it starts a fresh system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Messages retained per topic.
    pub retention_messages: usize,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { retention_messages: 10_000, max_payload: 2 * 1024 * 1024 }
    }
}

/// Starts systems under test: a broker, and for a transport a server on 127.0.0.1 over it.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Starts a fresh system with a new broker (so a new epoch) and the given limits.
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error>;
}

/// One running system under test.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// A client of the system: the transport's client, or the broker itself.
    fn client(&self) -> Arc<dyn Client>;

    /// Closes every live network connection between clients and server, as a network failure
    /// would. Later connections must work.
    async fn sever(&self) -> Result<(), Skip>;

    /// Replaces the server's broker by a fresh one (a new epoch, empty logs), as a restart of
    /// a server on the memory broker would. Existing clients must carry on against it.
    async fn restart(&self) -> Result<(), Skip>;

    /// How many subscriptions the server side is serving right now (its broker's live readers),
    /// so a case can check that dropping a subscription releases the server's state (S4).
    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        Err(Skip("the fixture cannot count the server's subscriptions".into()))
    }
}

/// Why a fixture cannot do what a case needs; the case is reported as skipped with it.
#[derive(Debug, Clone)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
