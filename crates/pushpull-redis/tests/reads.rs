//! How often a node's subscribers read Redis: a topic's subscribers on one node share its
//! reads (one per wake-up, one per quiet check), not one each; a quiet topic is checked less
//! and less often; and they still get every message, in order.

use std::time::Duration;

use futures::StreamExt;
use pushpull_core::{Cursor, Delivery, Publication, Publish, Subscribe, Topic};
use pushpull_redis::{RedisBroker, RedisConfig};
use pushpull_testkit::redis::RedisServer;

const SUBSCRIBERS: usize = 40;
const MESSAGES: usize = 10;

/// Scripts Redis has run (every read, and every publish, is one).
async fn scripts_run(server: &RedisServer) -> u64 {
    server.calls(&["evalsha", "eval"]).await.unwrap()
}

#[tokio::test]
async fn a_topics_subscribers_on_a_node_read_redis_once_between_them() {
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap().unwrap();
    let mut config = RedisConfig::new(server.url());
    // Quiet checks ten times a second: over the second below, forty subscribers reading each
    // on their own would run about 400 reads.
    config.check_interval = Duration::from_millis(100);
    let broker = RedisBroker::new(config).unwrap();
    let topic = Topic::new("shared-reads").unwrap();
    broker.publish(&topic, Publication::new("before")).await.unwrap();

    let mut subscriptions = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscriptions.push(broker.subscribe(&topic, Cursor::Latest).await.unwrap());
    }
    let readers: Vec<_> = subscriptions
        .into_iter()
        .map(|mut subscription| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < MESSAGES {
                    let next = tokio::time::timeout(Duration::from_secs(20), subscription.next());
                    match next.await.expect("every message arrives").expect("open").unwrap() {
                        Delivery::Message(message) => {
                            got.push(String::from_utf8(message.payload.to_vec()).unwrap());
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                got
            })
        })
        .collect();

    // Idle: only the quiet checks read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = scripts_run(&server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = scripts_run(&server).await - before;
    // Each publish wakes all forty.
    let before = scripts_run(&server).await;
    for i in 0..MESSAGES {
        broker.publish(&topic, Publication::new(format!("m{i}"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected, "every message, in order");
    }
    let loaded = (scripts_run(&server).await - before).saturating_sub(MESSAGES as u64);

    // Shared, about ten quiet checks a second, and a read or two per publish (plus the quiet
    // checks while publishing); each subscriber reading alone is ten times that.
    assert!(
        idle < SUBSCRIBERS as u64,
        "{idle} reads of Redis in a quiet second by {SUBSCRIBERS} subscribers of one topic \
         (checking every 100 ms): they read once each, not once between them"
    );
    assert!(
        loaded < (SUBSCRIBERS * MESSAGES / 4) as u64,
        "{loaded} reads of Redis for {MESSAGES} messages to {SUBSCRIBERS} subscribers of one \
         topic: each subscriber reads on its own"
    );
}

#[tokio::test]
async fn subscribing_where_the_nodes_window_reaches_reads_nothing_from_redis() {
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap().unwrap();
    let broker = RedisBroker::new(RedisConfig::new(server.url())).unwrap();
    let topic = Topic::new("covered").unwrap();
    let first = broker.publish(&topic, Publication::new("first")).await.unwrap();
    // A reader that has read the tail: this node's window of the topic reaches it.
    let mut reader = broker.subscribe(&topic, Cursor::Beginning).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), reader.next()).await.unwrap();
    assert!(matches!(got, Some(Ok(Delivery::Message(_)))), "{got:?}");

    // Subscribing from the tail (as each held long poll does) asks Redis nothing, and the
    // subscribers, woken by a publish, read it once between them.
    let before = scripts_run(&server).await;
    let mut subscriptions = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscriptions.push(broker.subscribe(&topic, first.cursor()).await.unwrap());
    }
    let subscribing = scripts_run(&server).await - before;
    let before = scripts_run(&server).await;
    broker.publish(&topic, Publication::new("second")).await.unwrap();
    for subscription in &mut subscriptions {
        let got = tokio::time::timeout(Duration::from_secs(20), subscription.next()).await;
        match got.unwrap() {
            Some(Ok(Delivery::Message(message))) => assert_eq!(&message.payload[..], b"second"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let woken = scripts_run(&server).await - before - 1;
    assert!(
        subscribing < 5,
        "{subscribing} reads of Redis for {SUBSCRIBERS} subscriptions at a cursor this node's \
         window reaches"
    );
    assert!(woken < 5, "{woken} reads of Redis for one message to {SUBSCRIBERS} subscribers");

    // A cursor of another epoch is still read from Redis, and answered with what it missed.
    let stale = Cursor::After(pushpull_core::Epoch::random(), pushpull_core::Offset(1));
    let mut behind = broker.subscribe(&topic, stale).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), behind.next()).await.unwrap();
    assert!(matches!(got, Some(Ok(Delivery::Gap(_)))), "{got:?}");
}

#[tokio::test]
async fn quiet_topics_are_checked_less_and_less_often_and_wake_at_once() {
    const TOPICS: usize = 30;
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap().unwrap();
    let mut config = RedisConfig::new(server.url());
    // Checking every 50 ms, thirty quiet topics with a reader each would be read about 1,800
    // times over three seconds.
    config.check_interval = Duration::from_millis(50);
    let broker = RedisBroker::new(config).unwrap();
    let topics: Vec<Topic> =
        (0..TOPICS).map(|i| Topic::new(format!("quiet-{i}")).unwrap()).collect();
    let mut subscriptions = Vec::new();
    for topic in &topics {
        subscriptions.push(broker.subscribe(topic, Cursor::Latest).await.unwrap());
    }
    let readers: Vec<_> = subscriptions
        .into_iter()
        .map(|mut subscription| {
            tokio::spawn(async move {
                let next = tokio::time::timeout(Duration::from_secs(20), subscription.next());
                match next.await.expect("the message arrives").expect("open").unwrap() {
                    Delivery::Message(message) => String::from_utf8(message.payload.to_vec()),
                    other => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = scripts_run(&server).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = scripts_run(&server).await - before;
    assert!(
        idle < (TOPICS * 3000 / 50 / 4) as u64,
        "{idle} reads of Redis in three quiet seconds by readers of {TOPICS} topics checking \
         every 50 ms: each quiet check should wait longer than the last"
    );
    // However long their quiet checks have grown, every reader gets its topic's message.
    for (i, topic) in topics.iter().enumerate() {
        broker.publish(topic, Publication::new(format!("m{i}"))).await.unwrap();
    }
    for (i, reader) in readers.into_iter().enumerate() {
        assert_eq!(reader.await.unwrap().unwrap(), format!("m{i}"));
    }
}
