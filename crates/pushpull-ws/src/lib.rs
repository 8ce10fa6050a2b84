#![doc = include_str!("../README.md")]

mod client;
pub mod close;
mod config;
mod server;
pub mod wire;

pub use client::Client;
pub use config::{ClientConfig, ServerConfig};
pub use server::{Server, WS_PATH};

/// The transport's name, in configuration and errors.
pub const NAME: &str = "ws";
