//! The SSE transport against the conformance suite, over a real server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use pushpull_testkit::http::HttpHarness;

fn harness() -> HttpHarness {
    HttpHarness::new(
        |broker| {
            let config = {
                let mut built = pushpull_sse::ServerConfig::default();
                built.retry = Duration::from_millis(50);
                built
            };
            pushpull_sse::SseServer::new(broker, config).expect("config").router()
        },
        |url| Ok(Arc::new(pushpull_sse::SseClient::new(pushpull_sse::ClientConfig::new(url))?)),
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
