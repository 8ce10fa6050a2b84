#![doc = include_str!("../README.md")]

mod proxy;
#[cfg(feature = "redis")]
mod redis_server;
pub mod soak;
mod tls;

pub use proxy::{Canned, ChaosProxy};
#[cfg(feature = "redis")]
pub use redis_server::RedisServer;
pub use tls::TestCa;
