//! Settings of the page route.

use std::time::Duration;

use pushpull_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// Settings of the page route (`[transports.poll]` in a server's configuration file: short
/// polling is nothing but this route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PageConfig {
    /// The interval the server asks clients to poll at (the `Pushpull-Poll-Interval-Ms` hint).
    #[serde(with = "pushpull_core::duration_text")]
    pub poll_interval: Duration,
    /// Messages per page when the request gives no `limit`.
    pub default_limit: usize,
    /// The largest `limit` accepted; more is a 400.
    pub max_limit: usize,
    /// A page stops growing past this many payload bytes (it always holds at least one message).
    pub max_page_bytes: usize,
    /// Send pages gzip-compressed to clients that accept it (`Accept-Encoding: gzip`).
    pub gzip: bool,
    /// Pages shorter than this (in bytes, uncompressed) are sent as they are: compressing a few
    /// hundred bytes saves little and costs the same call.
    pub gzip_min_bytes: usize,
}

impl Default for PageConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            default_limit: 100,
            max_limit: 1000,
            max_page_bytes: 8 * 1024 * 1024,
            gzip: true,
            gzip_min_bytes: 1024,
        }
    }
}

impl PageConfig {
    /// Checks the values; an error names the key, as `{section}.{key}`.
    pub fn validate(&self, section: &str) -> Result<(), Error> {
        let bad = |key: &str, why: &str| {
            Err(Error::new(ErrorKind::Config, format!("{section}.{key}: {why}")))
        };
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be more than zero");
        }
        if self.max_limit == 0 {
            return bad("max_limit", "must be at least 1");
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return bad("default_limit", "must be between 1 and max_limit");
        }
        if self.max_page_bytes == 0 {
            return bad("max_page_bytes", "must be at least 1");
        }
        Ok(())
    }
}
