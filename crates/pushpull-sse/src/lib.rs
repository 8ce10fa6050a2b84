#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;
pub mod wire;

pub use client::{SseClient, SseReader};
pub use config::{ClientConfig, ServerConfig};
pub use server::{EVENTS_PATH, MANY_EVENTS_PATH, Sse, SseServer};

/// The transport's name, in configuration and errors.
pub const NAME: &str = "sse";
