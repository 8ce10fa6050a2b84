//! Settings of the Redis broker.

use std::time::Duration;

use pushpull_core::{Error, ErrorKind, MemoryConfig, Retention};
use serde::{Deserialize, Serialize};

/// Settings of a [`RedisBroker`](crate::RedisBroker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server: `redis://HOST:PORT/DB`, `rediss://…` for TLS, or `redis+unix:///PATH`.
    pub url: String,
    /// A Redis Cluster instead of one server: the URLs of some of its nodes (any will do; the
    /// client learns the rest), or one URL. When set, `url` is not used.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub cluster: Vec<String>,
    /// Prepended to every key and channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// With `rediss://`: a PEM file of the certificate authority to trust instead of the
    /// system's roots (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// What each topic keeps; what falls out becomes a gap for readers behind it.
    pub retention: Retention,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// The most messages one fetch returns.
    pub max_page: usize,
    /// How long one Redis command may take before it fails with a retryable `backend` error.
    #[serde(with = "pushpull_core::duration_text")]
    pub response_timeout: Duration,
    /// How often a node reads each topic its subscribers follow even without a wake-up (one
    /// read for all of the topic's subscribers on the node), so a lost one costs little
    /// latency: a topic that stays quiet is checked after this, then twice as long after each
    /// quiet check, up to 32 times this, until a wake-up or a message.
    #[serde(with = "pushpull_core::duration_text")]
    pub check_interval: Duration,
    /// How long this node's members stay in Redis without being renewed: the node renews them
    /// every third of it, so the members of a node that died leave within about this much
    /// (plus a second for the sweep that writes their leaves).
    #[serde(with = "pushpull_core::duration_text")]
    pub presence_lease: Duration,
    /// After each publish, wait until this many replicas of the topic's master have it
    /// (Redis `WAIT`), at most `wait_timeout`, before acknowledging it; 0 acknowledges at once.
    /// A publish fewer replicas took fails with a retryable `backend` error: it is stored on
    /// the master, where a failover may still lose it; sent again with its idempotency key, it
    /// is stored once.
    pub wait_replicas: u32,
    /// How long a publish waits for `wait_replicas`.
    #[serde(with = "pushpull_core::duration_text")]
    pub wait_timeout: Duration,
}

/// A list of URLs, or one URL as a string.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a URL or a list of URLs of the cluster's nodes")
    })? {
        OneOrMany::One(url) => Ok(vec![url]),
        OneOrMany::Many(urls) => Ok(urls),
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        let memory = MemoryConfig::default();
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: Vec::new(),
            key_prefix: "pushpull:".into(),
            ca_file: None,
            retention: memory.retention,
            max_payload: memory.max_payload,
            max_page: memory.max_page,
            response_timeout: Duration::from_secs(2),
            check_interval: Duration::from_secs(1),
            presence_lease: Duration::from_secs(15),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

impl RedisConfig {
    /// A client of the Redis this config names: TLS for `rediss://`, trusting `ca_file` when
    /// set.
    pub(crate) fn client(&self) -> Result<redis::Client, Error> {
        self.client_with_protocol(redis::ProtocolVersion::RESP2)
    }

    /// [`client`](Self::client), speaking `protocol` (RESP3 for pushed messages).
    pub(crate) fn client_with_protocol(
        &self,
        protocol: redis::ProtocolVersion,
    ) -> Result<redis::Client, Error> {
        let bad_url = |e: redis::RedisError| {
            Error::new(ErrorKind::Config, format!("url {:?}: {e}", self.url))
        };
        use redis::IntoConnectionInfo;
        let info = self.url.as_str().into_connection_info().map_err(bad_url)?;
        let settings = info.redis_settings().clone().set_protocol(protocol);
        let info = info.set_redis_settings(settings);
        if !self.url.starts_with("rediss://") {
            return redis::Client::open(info).map_err(bad_url);
        }
        // One crypto provider for the process: ring (the only one this build has).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root_cert = match &self.ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Error::new(ErrorKind::Config, format!("ca_file {}: {e}", path.display()))
            })?),
        };
        let certificates = redis::TlsCertificates { client_tls: None, root_cert };
        redis::Client::build_with_tls(info, certificates).map_err(bad_url)
    }

    /// A client of the cluster this config names, speaking `protocol`, with the broker's
    /// timeouts; TLS when the nodes' URLs say `rediss://`, trusting `ca_file` when set.
    pub(crate) fn cluster_client(
        &self,
        protocol: redis::ProtocolVersion,
    ) -> Result<redis::cluster::ClusterClientBuilder, Error> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.cluster.clone())
            .use_protocol(protocol)
            .connection_timeout(self.response_timeout)
            .response_timeout(self.response_timeout)
            .retries(4);
        if self.cluster.iter().any(|url| url.starts_with("rediss://")) {
            let _ = rustls::crypto::ring::default_provider().install_default();
            if let Some(path) = &self.ca_file {
                let root_cert = std::fs::read(path).map_err(|e| {
                    Error::new(ErrorKind::Config, format!("ca_file {}: {e}", path.display()))
                })?;
                builder = builder
                    .certs(redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) });
            }
        }
        Ok(builder)
    }

    /// The defaults, on the cluster whose nodes (some of them) are at `urls`.
    pub fn cluster(urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { cluster: urls.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// The defaults, with the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::new(ErrorKind::Config, format!("{key}: {why}")));
        for url in &self.cluster {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return bad("cluster", &format!("{url:?} is not a redis:// or rediss:// URL"));
            }
        }
        if self.retention.max_messages == 0 {
            return bad("retention.max_messages", "must be at least 1");
        }
        if self.retention.max_bytes < self.max_payload {
            return bad("retention.max_bytes", "must be at least max_payload");
        }
        if self.max_page == 0 {
            return bad("max_page", "must be at least 1");
        }
        if self.response_timeout.is_zero() || self.check_interval.is_zero() {
            return bad(
                "response_timeout",
                "response_timeout and check_interval must be more than zero",
            );
        }
        if self.wait_replicas > 0
            && (self.wait_timeout.is_zero() || self.wait_timeout >= self.response_timeout)
        {
            return bad(
                "wait_timeout",
                "must be more than zero, and less than response_timeout (the WAIT is one command)",
            );
        }
        if self.presence_lease < Duration::from_secs(1) {
            return bad("presence_lease", "must be at least 1s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RedisConfig, String> {
        toml::from_str::<RedisConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_cluster_is_one_url_or_several_and_each_must_be_a_redis_url() {
        let one = parse(r#"cluster = "redis://10.0.0.5:7000""#).unwrap();
        assert_eq!(one.cluster, ["redis://10.0.0.5:7000"]);
        let two = parse(r#"cluster = ["redis://a:7000", "rediss://b:7000"]"#).unwrap();
        assert_eq!(two.cluster.len(), 2);
        let wrong = parse("cluster = 7000").unwrap_err();
        assert!(wrong.contains("a URL or a list of URLs"), "{wrong}");
        let error = RedisConfig::cluster(["10.0.0.5:7000"]).validate().unwrap_err();
        assert!(error.to_string().contains("not a redis:// or rediss:// URL"), "{error}");
        assert!(two.validate().is_ok());
        let mut waiting = two.clone();
        waiting.wait_replicas = 1;
        waiting.wait_timeout = waiting.response_timeout;
        let error = waiting.validate().unwrap_err().to_string();
        assert!(error.starts_with("wait_timeout") && error.contains("response_timeout"), "{error}");
    }
}
