#![doc = include_str!("../README.md")]

mod client;
pub mod close;
mod config;
mod deflate;
mod server;
pub mod wire;

pub use client::WsClient;
pub use config::{ClientConfig, ServerConfig, message_limit_for};
pub use server::{WS_PATH, WsServer};

/// The transport's name, in configuration and errors.
pub const NAME: &str = "ws";
