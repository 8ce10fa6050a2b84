//! The webhook transport against the conformance suite: a real server on 127.0.0.1 delivering
//! to the client's receiver on 127.0.0.1 (loopback allowed explicitly, as tests need).

use std::sync::Arc;
use std::time::Duration;

use pushpull_testkit::http::HttpHarness;

fn harness() -> HttpHarness {
    HttpHarness::new(
        |broker| {
            let config = {
                let mut built = pushpull_webhook::ServerConfig::default();
                built.allow_loopback = true;
                built.schedule =
                    vec![Duration::ZERO, Duration::from_millis(20), Duration::from_millis(100)];
                built
            };
            pushpull_webhook::WebhookServer::new(broker, config).expect("config").router()
        },
        |url| {
            let config = {
                let mut built = pushpull_webhook::ClientConfig::new(url);
                built.check_interval = Duration::from_millis(100);
                built
            };
            Ok(Arc::new(pushpull_webhook::WebhookClient::new(config)?))
        },
    )
}

pushpull_testkit::conformance!(harness());

/// The same suite with the server's logs in Redis (a redis-server of each case's own).
mod over_redis {
    pushpull_testkit::conformance!(crate::harness().over_redis());
}

/// The same suite on a Redis Cluster (three masters, three replicas) shared by the cases,
/// each under a key prefix of its own.
mod over_redis_cluster {
    pushpull_testkit::conformance!(crate::harness().over_redis_cluster());
}
