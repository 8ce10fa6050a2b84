//! The polling transport against the conformance suite, over a real server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use pushpull_testkit::http::HttpHarness;

fn harness() -> HttpHarness {
    HttpHarness::new(
        |broker| {
            let config = {
                let mut built = pushpull_poll::ServerConfig::default();
                built.poll_interval = Duration::from_millis(50);
                built
            };
            pushpull_poll::PollServer::new(broker, config).expect("valid config").router().clone()
        },
        |url| Ok(Arc::new(pushpull_poll::PollClient::new(pushpull_poll::ClientConfig::new(url))?)),
    )
}

pushpull_testkit::conformance!(harness());

/// The same suite with the server's logs in Redis (a redis-server of each case's own).
mod over_redis {
    pushpull_testkit::conformance!(crate::harness().over_redis());
}
