//! A server on the Redis broker when Redis fails: unreachable (publishes answer 503 with
//! `Retry-After`, readiness says no, subscribers wait and carry on), restarted with persistence
//! (nothing lost; a gap that misses nothing says the log's epoch changed, as after any restart
//! the broker cannot tell lost nothing), restarted without (an `epoch_changed` gap, never a
//! silent restart at 1).

mod support;

use std::time::Duration;

use futures::StreamExt;
use pushpull::{
    BrokerConfig, ClientConfig, Cursor, Delivery, GapReason, Publication, ServerConfig, Topic,
};
use pushpull_testkit::redis::RedisServer;
use support::{LIMIT, get, post};

fn config(redis: &RedisServer) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.broker = BrokerConfig::new("redis").set("url", redis.url());
    config
}

async fn next(sub: &mut pushpull::Subscription) -> Delivery {
    match tokio::time::timeout(LIMIT, sub.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

fn payload(delivery: &Delivery) -> String {
    String::from_utf8(delivery.as_message().expect("a message").payload.to_vec()).unwrap()
}

#[tokio::test]
async fn an_unreachable_redis_is_a_503_and_subscribers_carry_on_when_it_returns() {
    let mut redis = RedisServer::start_with(true).unwrap();
    let server = support::server(config(&redis)).await;
    let addr = server.local_addr();
    assert_eq!(get(addr, "/v1/ready").await.status, 200);
    let client =
        pushpull::connect(&ClientConfig::new("sse", format!("http://{addr}"))).await.unwrap();
    let topic = Topic::new("faults").unwrap();
    let mut sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
    client.publish(&topic, Publication::new("before")).await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "before");

    redis.kill();
    let refused = post(addr, "/v1/topics/faults", "", b"while down").await;
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.error_kind(), "backend");
    assert!(refused.header("retry-after").is_some(), "a 503 says when to retry");
    let ready = get(addr, "/v1/ready").await;
    assert_eq!(ready.status, 503, "not ready without the broker");
    assert_eq!(get(addr, "/v1/health").await.json()["ready"], false);

    redis.restart().unwrap();
    // The subscription waited; what is published now reaches it, after what it had.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.publish(&topic, Publication::new("after")).await.unwrap();
    // A restarted Redis may have lost its last writes (`appendfsync everysec`): the log gets a
    // new epoch, and the reader a gap that misses nothing here (everything was fsynced).
    match next(&mut sub).await {
        Delivery::Gap(gap) => {
            assert!(matches!(gap.reason, GapReason::EpochChanged { .. }), "{gap:?}");
            assert_eq!(gap.missed, None, "persistence kept the log: nothing missed");
        }
        other => panic!("expected the new epoch's gap, got {other:?}"),
    }
    let delivery = next(&mut sub).await;
    assert_eq!(payload(&delivery), "after", "no repeat");
    assert_eq!(delivery.as_message().unwrap().offset.0, 2);
    assert_eq!(get(addr, "/v1/ready").await.status, 200);
}

#[tokio::test]
async fn a_redis_that_lost_its_data_gives_readers_an_epoch_changed_gap() {
    let mut redis = RedisServer::start().unwrap();
    let server = support::server(config(&redis)).await;
    let url = format!("http://{}", server.local_addr());
    for transport in ["ws", "longpoll"] {
        let client = pushpull::connect(&ClientConfig::new(transport, &url)).await.unwrap();
        let topic = Topic::new(format!("lost-{transport}")).unwrap();
        let mut sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
        client.publish(&topic, Publication::new("one")).await.unwrap();
        client.publish(&topic, Publication::new("two")).await.unwrap();
        let two = next(&mut sub).await;
        let two = match two {
            Delivery::Message(m) if m.payload == "one" => next(&mut sub).await,
            other => other,
        };
        let before = two.as_message().expect("a message").epoch;

        redis.restart().unwrap(); // no persistence: everything is gone
        let published = loop {
            // The client retries itself; the loop covers the moment Redis is starting.
            match client.publish(&topic, Publication::new("fresh")).await {
                Ok(receipt) => break receipt,
                Err(error) if error.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("{transport}: {error}"),
            }
        };
        assert_ne!(published.epoch, before, "a new epoch, not offset 1 of the old one");
        match next(&mut sub).await {
            Delivery::Gap(gap) => {
                assert_eq!(gap.reason, GapReason::EpochChanged { previous: before }, "{transport}");
            }
            other => panic!("{transport}: expected an epoch_changed gap, got {other:?}"),
        }
        let fresh = next(&mut sub).await;
        assert_eq!(payload(&fresh), "fresh", "{transport}");
        assert_eq!(fresh.as_message().unwrap().epoch, published.epoch);
    }
}

#[tokio::test]
async fn a_slow_redis_delays_but_loses_nothing() {
    let redis = std::sync::Arc::new(RedisServer::start().unwrap());
    let mut config = config(&redis);
    config
        .transports
        .configure::<pushpull::sse::SseServer>(|c| c.heartbeat = Duration::from_millis(500))
        .unwrap();
    let server = support::server(config).await;
    let url = format!("http://{}", server.local_addr());
    let client = pushpull::connect(&ClientConfig::new("sse", &url)).await.unwrap();
    let topic = Topic::new("slow").unwrap();
    let mut sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
    client.publish(&topic, Publication::new("before")).await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "before");

    // Redis stalls for 3 s: longer than the broker's 2 s response timeout.
    let stalled = redis.clone();
    let stall = tokio::spawn(async move { stalled.command(&["DEBUG", "SLEEP", "3"]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = client.publish(&topic, Publication::new("during")).await;
    // (The stalling command itself times out on its own connection; Redis sleeps on.)
    let _ = stall.await;
    if let Err(error) = &during {
        assert!(error.is_retryable(), "a slow Redis is a retryable failure: {error:?}");
        client.publish(&topic, Publication::new("during")).await.unwrap();
    }
    client.publish(&topic, Publication::new("after")).await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "during", "delayed, not lost");
    assert_eq!(payload(&next(&mut sub).await), "after");
}
