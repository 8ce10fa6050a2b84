#![doc = include_str!("../README.md")]

mod broker;
mod cache;
mod config;
#[cfg(feature = "webhook")]
mod endpoints;
mod scripts;
mod wake;

pub use broker::RedisBroker;
pub use config::RedisConfig;
#[cfg(feature = "webhook")]
pub use endpoints::RedisEndpointStore;

/// The name the Redis broker gives in errors and capabilities.
pub const NAME: &str = "redis";
