#![doc = include_str!("../README.md")]

mod client_config;
pub mod demo;
pub mod metrics;
mod serve;
mod server_config;

pub use client_config::{AUTO, AUTO_ORDER, ClientConfig, Registry, TransportFactory, connect};
pub use demo::Demo;
pub use serve::{broker, router, serve, serve_config, serve_on, serve_with, transports};
pub use server_config::{
    BrokerConfig, BrokerKind, ENV_PREFIX, HttpConfig, RetentionConfig, Section, ServerConfig,
    TransportsConfig,
};

pub use pushpull_core::*;
pub use pushpull_http::{RunningServer, ServeConfig, Shutdown, ShutdownTrigger};
#[cfg(feature = "longpoll")]
pub use pushpull_longpoll as longpoll;
#[cfg(feature = "poll")]
pub use pushpull_poll as poll;
#[cfg(feature = "redis")]
pub use pushpull_redis as redis;
#[cfg(feature = "sse")]
pub use pushpull_sse as sse;
#[cfg(feature = "stream")]
pub use pushpull_stream as stream;
#[cfg(feature = "webhook")]
pub use pushpull_webhook as webhook;
#[cfg(feature = "ws")]
pub use pushpull_ws as ws;
