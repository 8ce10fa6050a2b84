//! The long-polling transport against the conformance suite, over a real server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use pushpull_testkit::http::HttpHarness;

fn harness() -> HttpHarness {
    HttpHarness::new(
        |broker| {
            pushpull_longpoll::LongpollServer::new(broker, Default::default())
                .expect("config")
                .router()
        },
        |url| {
            let config = {
                let mut built = pushpull_longpoll::ClientConfig::new(url);
                built.wait = Duration::from_secs(10);
                built
            };
            Ok(Arc::new(pushpull_longpoll::LongpollClient::new(config)?))
        },
    )
}

pushpull_testkit::conformance!(harness());

/// The same suite with the server's logs in Redis (a redis-server of each case's own).
mod over_redis {
    pushpull_testkit::conformance!(crate::harness().over_redis());
}
