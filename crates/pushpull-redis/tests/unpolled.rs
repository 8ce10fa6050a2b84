//! A subscription or a command that its owner stops polling half-way (a session busy writing to
//! a slow socket, or answering a request of its own) holds nothing the node's other readers and
//! commands wait for: a topic's shared read of Redis, and the cluster connection being made,
//! go on without it.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use pushpull_core::{
    Cursor, Delivery, Fetch, Publication, Publish, Subscribe, Subscription, Topic,
};
use pushpull_redis::{RedisBroker, RedisConfig};
use pushpull_testkit::redis::{RedisCluster, RedisServer};

/// How long the others may take: far more than a read of a local Redis.
const PATIENCE: Duration = Duration::from_secs(5);

async fn next_payload(subscription: &mut Subscription) -> String {
    let next = tokio::time::timeout(PATIENCE, subscription.next()).await;
    match next.expect("the other subscriber is not held up").expect("open").unwrap() {
        Delivery::Message(message) => String::from_utf8(message.payload.to_vec()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_subscriber_left_unpolled_holds_up_no_other_subscriber_of_its_topic() {
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap().unwrap();
    let mut config = RedisConfig::new(server.url());
    // Quick quiet checks, so the subscriber left behind reads Redis at the window's end soon.
    config.check_interval = Duration::from_millis(50);
    let broker = RedisBroker::new(config).unwrap();
    // The subscriber left behind is polled `polls` times, far enough apart for each read it
    // started to have been answered: whatever it was doing at its last poll (reading Redis
    // alone, waiting for a wake-up, reading at the window's end for everyone), the other
    // subscriber gets the next message.
    for polls in 1..=6 {
        let topic = Topic::new(format!("unpolled-{polls}")).unwrap();
        broker.publish(&topic, Publication::new("before")).await.unwrap();
        let mut behind = broker.subscribe(&topic, Cursor::Latest).await.unwrap();
        let mut other = broker.subscribe(&topic, Cursor::Latest).await.unwrap();
        for _ in 0..polls {
            assert!(behind.next().now_or_never().is_none(), "nothing was published yet");
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        broker.publish(&topic, Publication::new("after")).await.unwrap();
        assert_eq!(next_payload(&mut other).await, "after", "after {polls} polls");
        // The one left behind misses nothing either, once it is polled again.
        assert_eq!(next_payload(&mut behind).await, "after", "after {polls} polls");
    }
}

#[tokio::test]
async fn a_command_left_unpolled_while_the_cluster_connection_is_made_holds_up_no_other() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap().unwrap();
    let broker = RedisBroker::new(RedisConfig::cluster(cluster.urls())).unwrap();
    let first = Topic::new("unpolled-first").unwrap();
    let second = Topic::new("unpolled-second").unwrap();
    // The first command makes the node's connection to the cluster: polled once, it has
    // started that, and is then left.
    let mut left = Box::pin(broker.fetch(&first, Cursor::Beginning, 10));
    assert!((&mut left).now_or_never().is_none(), "connecting takes a round trip at least");
    let other = tokio::time::timeout(PATIENCE, broker.publish(&second, Publication::new("m")));
    other.await.expect("the other command is not held up").unwrap();
    let page = tokio::time::timeout(PATIENCE, broker.fetch(&second, Cursor::Beginning, 10));
    assert_eq!(page.await.expect("not held up").unwrap().messages.len(), 1);
    // The command left behind goes on when it is polled again.
    let page = tokio::time::timeout(PATIENCE, left).await.expect("it finishes").unwrap();
    assert!(page.messages.is_empty());
}
