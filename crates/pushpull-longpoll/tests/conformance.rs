//! The long-polling transport against the conformance suite, over a real server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use pushpull_testkit::http::HttpHarness;

fn harness() -> HttpHarness {
    HttpHarness::new(
        |broker| {
            // Polling clients stay members 3 s past their last poll: a case sees them leave
            // well within its step timeout.
            let context = pushpull_http::Context::new(broker).with_presence(short_lease());
            <pushpull_longpoll::LongpollServer as pushpull_http::TransportServer>::build(
                &context,
                Default::default(),
            )
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

fn short_lease() -> pushpull_http::PresenceConfig {
    let mut presence = pushpull_http::PresenceConfig::default();
    presence.poll_lease = Duration::from_secs(3);
    presence
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
