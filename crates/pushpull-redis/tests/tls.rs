//! `rediss://`: the broker speaks TLS to Redis, trusting a private certificate authority when
//! told to, and refusing a server it cannot verify.

use std::time::Duration;

use futures::StreamExt;
use pushpull_core::{Cursor, Fetch, Publication, Publish, Subscribe, Topic};
use pushpull_redis::{RedisBroker, RedisConfig};
use pushpull_testkit::redis::RedisServer;

#[tokio::test]
async fn the_broker_works_over_tls_with_a_private_ca() {
    let server = RedisServer::start_tls().unwrap();
    let url = server.tls_url().unwrap();
    let config = {
        let mut built = RedisConfig::new(&url);
        built.ca_file = Some(server.ca_file());
        built
    };
    let broker = RedisBroker::new(config).unwrap();
    let topic = Topic::new("over-tls").unwrap();
    let mut sub = broker.subscribe(&topic, Cursor::Beginning).await.unwrap();
    broker.publish(&topic, Publication::new("secret")).await.unwrap();
    let page = broker.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages[0].payload, "secret");
    let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap();
    assert_eq!(delivery.unwrap().unwrap().as_message().unwrap().payload, "secret");

    // Without the CA, the server's certificate cannot be verified: nothing is sent to it.
    let untrusted = RedisBroker::new({
        let mut built = RedisConfig::new(&url);
        built.response_timeout = Duration::from_millis(500);
        built
    })
    .unwrap();
    let refused = untrusted.publish(&topic, Publication::new("no")).await;
    assert!(refused.is_err(), "an unverified server must not be used");
    assert_eq!(broker.fetch(&topic, Cursor::Beginning, 10).await.unwrap().messages.len(), 1);
}
