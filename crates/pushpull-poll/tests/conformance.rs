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
            // Polling clients stay members 3 s past their last poll: a case sees them leave
            // well within its step timeout.
            let context = pushpull_http::Context::new(broker)
                .with_pages(config.clone(), "poll")
                .with_presence(short_lease());
            <pushpull_poll::PollServer as pushpull_http::TransportServer>::build(&context, config)
                .expect("valid config")
                .router()
        },
        |url| Ok(Arc::new(pushpull_poll::PollClient::new(pushpull_poll::ClientConfig::new(url))?)),
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
