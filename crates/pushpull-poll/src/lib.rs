#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;
pub mod wire;

pub use client::{Client, fetch_page};
pub use config::{ClientConfig, ServerConfig};
pub use server::{MESSAGES_PATH, PageRequest, Server, page_response, routes};

/// The transport's name, in configuration and errors.
pub const NAME: &str = "poll";
