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
