//! Run with: `cargo run -p custom-transport`
//!
//! A transport written by a user against `pushpull-core` alone: JSON lines over a TCP
//! connection. A request is one line (`publish`, `fetch` or `subscribe`); the answer is one
//! line, and after `subscribe` the connection carries the subscription's messages and gaps, one
//! per line, until the client closes it. The client resumes a broken subscription from its
//! cursor (with `pushpull_core::Position`, so nothing repeats), implements `Connect` so a
//! `Registry` picks it by the name `line` with its own `[line]` settings section, and the whole
//! conformance suite judges it (`tests/conformance.rs`).
//!
//! Its server registers the same way (`LineTransport` implements `pushpull_http::TransportServer`):
//! a pushpull server built from a registry holding it serves `[transports.line]` on a listener
//! of its own, beside HTTP, over the same broker (`tests/served.rs`).

mod client;
mod served;
mod server;
pub mod wire;

pub use client::{LineClient, LineConfig};
pub use served::{LineServerConfig, LineTransport};
pub use server::LineServer;

/// The transport's name in configuration: `transport = "line"` and `[line]`.
pub const NAME: &str = "line";
