#![doc = include_str!("../README.md")]

mod config;
mod jwks;
mod layer;
mod refusal;
mod verify;

pub use config::{AuthConfig, JwksConfig, KeyConfig, Rights};
pub use layer::{Auth, AuthBody, AuthFuture, AuthLayer};
pub use pushpull_http::{Grant, Right, TopicPattern};
pub use refusal::{REALM, Refusal};
pub use verify::Verifier;
