#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;

pub use client::PollClient;
pub use config::ClientConfig;
/// Settings of the polling [`PollServer`]: the page route's.
pub use pushpull_http::PageConfig as ServerConfig;
pub use server::PollServer;

/// The transport's name, in configuration and errors.
pub const NAME: &str = "poll";
