//! The streaming transport against the conformance suite, in both record formats, over a real
//! server on 127.0.0.1.

use std::sync::Arc;

use pushpull_stream::{ClientConfig, FramingChoice};
use pushpull_testkit::http::HttpHarness;

fn harness(framing: FramingChoice) -> HttpHarness {
    HttpHarness::new(
        |broker| {
            pushpull_stream::StreamServer::new(broker, Default::default()).expect("config").router()
        },
        move |url| {
            let config = {
                let mut built = ClientConfig::new(url);
                built.framing = framing;
                built
            };
            Ok(Arc::new(pushpull_stream::StreamClient::new(config)?))
        },
    )
}

mod binary {
    use super::*;
    pushpull_testkit::conformance!(harness(FramingChoice::Binary));
}

mod ndjson {
    use super::*;
    pushpull_testkit::conformance!(harness(FramingChoice::Ndjson));
}

/// The same suite with the server's logs in Redis (a redis-server of each case's own).
mod over_redis {
    pushpull_testkit::conformance!(crate::harness(crate::FramingChoice::Binary).over_redis());
}

/// The same suite on a Redis Cluster (three masters, three replicas) shared by the cases,
/// each under a key prefix of its own.
mod over_redis_cluster {
    pushpull_testkit::conformance!(
        crate::harness(crate::FramingChoice::Binary).over_redis_cluster()
    );
}
