#![doc = include_str!("../README.md")]
// docs.rs builds with `--cfg docsrs`: each feature-gated item shows the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod proxy;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_server;
pub mod soak;
mod tls;

pub use proxy::{Canned, ChaosProxy};
#[cfg(feature = "redis")]
pub use redis_cluster::RedisCluster;
#[cfg(feature = "redis")]
pub use redis_server::RedisServer;
pub use tls::TestCa;
