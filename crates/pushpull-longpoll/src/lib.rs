#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;

pub use client::LongpollClient;
pub use config::{ClientConfig, ServerConfig};
pub use server::LongpollServer;

/// The transport's name, in configuration and errors.
pub const NAME: &str = "longpoll";
