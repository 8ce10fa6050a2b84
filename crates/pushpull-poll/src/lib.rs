#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;

pub use client::Client;
pub use config::ClientConfig;
/// Settings of the polling [`Server`]: the page route's.
pub use pushpull_http::PageConfig as ServerConfig;
pub use server::Server;

/// The transport's name, in configuration and errors.
pub const NAME: &str = "poll";
