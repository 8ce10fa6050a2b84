//! Retention by bytes and by age: what falls out is gone from pages and subscriptions, and a
//! reader behind it gets a gap naming exactly the missed offsets.

use std::time::Duration;

use futures::StreamExt;
use pushpull_core::{
    Cursor, Delivery, Fetch, GapReason, MemoryBroker, MemoryConfig, Offset, OffsetRange,
    Publication, Publish, Retention, Subscribe, Topic,
};

fn broker(retention: Retention) -> MemoryBroker {
    let max_payload = retention.max_bytes.min(MemoryConfig::default().max_payload);
    MemoryBroker::with_config({
        let mut built = MemoryConfig::default();
        built.retention = retention;
        built.max_payload = max_payload;
        built
    })
    .unwrap()
}

async fn publish(broker: &MemoryBroker, topic: &Topic, payload: &'static str) -> Cursor {
    broker.publish(topic, Publication::new(payload)).await.unwrap().cursor()
}

/// What a reader at `cursor` gets: the gap it must be told of, and the messages' offsets.
async fn read_from(
    broker: &MemoryBroker,
    topic: &Topic,
    cursor: Cursor,
) -> (Option<OffsetRange>, Vec<u64>) {
    let page = broker.fetch(topic, cursor, 100).await.unwrap();
    let offsets = page.messages.iter().map(|m| m.offset.0).collect();
    (
        page.gap.map(|g| {
            assert_eq!(g.reason, GapReason::Retention);
            g.missed.expect("a retention gap names what was missed")
        }),
        offsets,
    )
}

fn range(first: u64, last: u64) -> Option<OffsetRange> {
    Some(OffsetRange { first: Offset(first), last: Offset(last) })
}

#[tokio::test]
async fn the_oldest_messages_go_when_the_bytes_run_over() {
    let broker = broker({
        let mut built = Retention::default();
        built.max_bytes = 10;
        built
    });
    let topic = Topic::new("bytes").unwrap();
    let before = broker.fetch(&topic, Cursor::Latest, 1).await.unwrap().next;
    let mut sub = broker.subscribe(&topic, before).await.unwrap();
    for payload in ["aaaa", "bbbb", "cccc"] {
        publish(&broker, &topic, payload).await; // 12 bytes: the first no longer fits
    }
    assert_eq!(read_from(&broker, &topic, Cursor::Beginning).await, (None, vec![2, 3]));
    assert_eq!(read_from(&broker, &topic, before).await, (range(1, 1), vec![2, 3]));
    // A subscriber that had not read it yet is told exactly what it missed.
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap();
    match first.unwrap().unwrap() {
        Delivery::Gap(gap) => assert_eq!(gap.missed, range(1, 1)),
        Delivery::Message(m) => panic!("expected a gap, got message {}", m.offset),
    }
    // A payload as large as the limit pushes out everything before it.
    publish(&broker, &topic, "0123456789").await;
    assert_eq!(read_from(&broker, &topic, Cursor::Beginning).await, (None, vec![4]));
}

#[tokio::test]
async fn messages_older_than_the_age_limit_go() {
    let broker = broker({
        let mut built = Retention::default();
        built.max_age = Some(Duration::from_millis(100));
        built
    });
    let topic = Topic::new("age").unwrap();
    let before = broker.fetch(&topic, Cursor::Latest, 1).await.unwrap().next;
    publish(&broker, &topic, "old").await;
    publish(&broker, &topic, "old too").await;
    assert_eq!(read_from(&broker, &topic, Cursor::Beginning).await, (None, vec![1, 2]));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Aged out even before anything new is published.
    assert_eq!(read_from(&broker, &topic, before).await, (range(1, 2), vec![]));
    publish(&broker, &topic, "new").await;
    assert_eq!(read_from(&broker, &topic, Cursor::Beginning).await, (None, vec![3]));
    assert_eq!(read_from(&broker, &topic, before).await, (range(1, 2), vec![3]));
}
