#![doc = include_str!("../README.md")]

mod broker;
mod cache;
mod config;
mod link;
mod presence;
mod scripts;
mod shared;
mod wake;

pub use broker::{RedisBroker, WakeUps};
pub use config::RedisConfig;
pub use shared::RedisSharedState;

/// The name the Redis broker gives in errors and capabilities.
pub const NAME: &str = "redis";
