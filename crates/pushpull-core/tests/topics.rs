//! Reading creates no state: subscribing to a topic nobody published to takes no topic slot,
//! so a flood of subscriptions to made-up names cannot lock publishers out (S5 still holds).

use std::time::Duration;

use futures::StreamExt;
use pushpull_core::{Cursor, MemoryBroker, MemoryConfig, Publication, Publish, Subscribe, Topic};

async fn publish(broker: &MemoryBroker, topic: &Topic, payload: &'static str) {
    broker.publish(topic, Publication::new(payload)).await.unwrap();
}

#[tokio::test]
async fn subscribing_takes_no_topic_slot_and_still_sees_the_first_publish() {
    let broker =
        MemoryBroker::with_config(MemoryConfig { max_topics: 2, ..MemoryConfig::default() })
            .unwrap();
    // A flood of subscriptions to names nobody publishes to...
    let mut flood = Vec::new();
    for n in 0..50 {
        let topic = Topic::new(format!("made-up-{n}")).unwrap();
        flood.push(broker.subscribe(&topic, Cursor::Latest).await.unwrap());
    }
    assert_eq!(broker.topic_count(), 0, "subscriptions hold no topic");
    // ...does not lock publishers out.
    for name in ["real-a", "real-b"] {
        publish(&broker, &Topic::new(name).unwrap(), "x").await;
    }
    let refused = broker.publish(&Topic::new("made-up-7").unwrap(), Publication::new("x")).await;
    assert!(refused.is_err(), "now the two slots are taken: {refused:?}");
    drop(flood);

    // A subscriber that came before the first publish sees the message that creates its topic.
    let broker = MemoryBroker::new();
    let topic = Topic::new("first").unwrap();
    let mut first = broker.subscribe(&topic, Cursor::Beginning).await.unwrap();
    assert_eq!(broker.topic_count(), 0);
    publish(&broker, &topic, "hello").await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), first.next()).await.unwrap();
    assert_eq!(delivery.unwrap().unwrap().as_message().unwrap().payload, "hello");
    assert_eq!(broker.subscriber_count(), 1);
    drop(first);
    assert_eq!(broker.subscriber_count(), 0);
}
