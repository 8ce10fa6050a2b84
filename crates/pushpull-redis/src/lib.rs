#![doc = include_str!("../README.md")]

mod broker;
mod config;
mod scripts;
mod wake;

pub use broker::RedisBroker;
pub use config::RedisConfig;

/// The name the Redis broker gives in errors and capabilities.
pub const NAME: &str = "redis";
