//! The face every HTTP transport's server shows, so that a server serving several of them (the
//! `pushpull` facade, or an application of its own) composes them the same way.

use std::fmt::Debug;
use std::sync::Arc;

use pushpull_core::{Broker, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::router::Route;

/// A live count reported by the health route, read when asked.
pub type Reading = Box<dyn Fn() -> usize + Send + Sync>;

/// A transport's server half.
///
/// Its own [`routes`](Self::routes) mount beside the shared HTTP API (publish and the page
/// route, see [`api`](crate::api)), which a composing server adds once.
pub trait TransportServer: Sized + Send + Sync + 'static {
    /// The transport's name, and its section in a server's configuration:
    /// `[transports.NAME]`.
    const NAME: &'static str;

    /// The transport's server settings, all optional (`#[serde(default)]`), unknown keys
    /// refused.
    type Config: Default + Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    /// A server over `broker`; a bad setting is a `config` error naming its key as
    /// `NAME.key`.
    fn new(broker: Arc<dyn Broker>, config: Self::Config) -> Result<Self, Error>;

    /// The transport's own routes.
    fn routes(&self) -> Vec<Route>;

    /// Live counts for a health route, by name (open streams, sockets, …).
    fn gauges(&self) -> Vec<(&'static str, Reading)> {
        Vec::new()
    }
}
