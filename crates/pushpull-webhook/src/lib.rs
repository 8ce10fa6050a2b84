#![doc = include_str!("../README.md")]

mod client;
mod config;
mod server;
pub mod targets;
pub mod wire;

pub use client::WebhookClient;
pub use config::{ClientConfig, OnExhausted, ServerConfig};
pub use server::{
    CreateEndpoint, DeadMessage, EndpointRecord, EndpointStore, EndpointView, MemoryEndpointStore,
    Progress, SharedEndpointStore, WEBHOOK_ATTEMPTS, WEBHOOK_DEAD, WEBHOOK_FAILURES, WEBHOOKS_PATH,
    WebhookServer,
};

/// The transport's name, in configuration and errors.
pub const NAME: &str = "webhook";
