//! The WebSocket transport against the conformance suite, over a real server on 127.0.0.1.

use std::sync::Arc;

use pushpull_testkit::http::HttpHarness;

fn harness() -> HttpHarness {
    HttpHarness::new(
        |broker| pushpull_ws::WsServer::new(broker, Default::default()).expect("config").router(),
        |url| Ok(Arc::new(pushpull_ws::WsClient::new(pushpull_ws::ClientConfig::new(url))?)),
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
