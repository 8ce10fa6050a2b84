#![doc = include_str!("../README.md")]

mod proxy;
pub mod soak;

pub use proxy::{Canned, ChaosProxy};
