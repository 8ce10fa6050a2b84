#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;
pub mod wire;

pub use client::{StreamClient, StreamReader};
pub use config::{ClientConfig, FramingChoice, ServerConfig};
pub use server::{MANY_STREAM_PATH, STREAM_PATH, Stream, StreamServer};

/// The transport's name, in configuration and errors.
pub const NAME: &str = "stream";
