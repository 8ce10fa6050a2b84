//! The demo page and the browser client it runs on.
//!
//! With `[http] demo` on (by default, only when listening on a loopback address) the server
//! serves `GET /demo` (a live ticker over a transport the visitor picks, with the requests and
//! bytes each costs), the browser client as `GET /pushpull/pushpull.js` (with its TypeScript
//! types beside it), and, from the page's first visit, publishes the ticker's prices to
//! `demo.ticker` twice a second for as long as the routes are served.

use serde::{Deserialize, Serialize};

#[cfg(feature = "demo")]
mod served;
#[cfg(feature = "demo")]
pub(crate) use served::routes;
#[cfg(feature = "demo")]
pub use served::{CLIENT_JS, CLIENT_TYPES};

/// The topic the demo's ticker publishes to.
pub const TICKER_TOPIC: &str = "demo.ticker";

/// Whether the server serves the demo page and the browser client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Demo {
    /// Only when listening on a loopback address (the default).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl Demo {
    /// Whether to serve it for a server listening on `listen`.
    pub fn enabled(self, listen: std::net::SocketAddr) -> bool {
        match self {
            Self::Auto => listen.ip().is_loopback(),
            Self::On => true,
            Self::Off => false,
        }
    }
}
