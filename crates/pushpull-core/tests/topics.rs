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
    let broker = MemoryBroker::with_config({
        let mut built = MemoryConfig::default();
        built.max_topics = 2;
        built
    })
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

#[tokio::test]
async fn a_full_table_releases_idle_unread_topics_and_a_returning_reader_gets_an_exact_gap() {
    use pushpull_core::{Delivery, Fetch, GapReason, Offset};
    let config = {
        let mut built = MemoryConfig::default();
        built.max_topics = 2;
        built.idle_topic_timeout = Duration::from_millis(200);
        built
    };
    let broker = MemoryBroker::with_config(config).unwrap();
    let (idle, read, fresh) =
        (Topic::new("idle").unwrap(), Topic::new("read").unwrap(), Topic::new("fresh").unwrap());
    for _ in 0..3 {
        publish(&broker, &idle, "old").await;
    }
    let cursor = broker.fetch(&idle, Cursor::Beginning, 10).await.unwrap().next;
    let early = broker.fetch(&idle, Cursor::Beginning, 1).await.unwrap().next;
    publish(&broker, &read, "r").await;
    // A topic with a reader is never released, however idle.
    let mut reader = broker.subscribe(&read, Cursor::Latest).await.unwrap();
    // Full, and nothing idle long enough yet: refused.
    assert!(broker.publish(&fresh, Publication::new("x")).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now `idle` goes to make room; `read` stays.
    publish(&broker, &fresh, "x").await;
    assert_eq!(broker.topic_count(), 2);
    publish(&broker, &read, "still here").await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), reader.next()).await.unwrap();
    assert_eq!(delivery.unwrap().unwrap().as_message().unwrap().payload, "still here");

    // The released topic numbers on where it stopped, so its old reader gets an exact gap.
    let page = broker.fetch(&idle, cursor, 10).await.unwrap();
    assert!(page.gap.is_none() && page.messages.is_empty(), "nothing new since: {page:?}");
    drop(reader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&broker, &idle, "new").await;
    let page = broker.fetch(&idle, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages[0].offset, Offset(4), "numbering continues after a release");
    let mut old_reader = broker.subscribe(&idle, early).await.unwrap();
    match old_reader.next().await.unwrap().unwrap() {
        Delivery::Gap(gap) => {
            assert_eq!(gap.reason, GapReason::Retention);
            let missed = gap.missed.unwrap();
            assert_eq!((missed.first, missed.last), (Offset(2), Offset(3)));
        }
        other => panic!("expected the gap of the released messages, got {other:?}"),
    }
}

/// A receipt says how many subscriptions followed the topic when it was published, those that
/// subscribed before the topic existed included; a retried publish answered with its first
/// receipt does not say.
#[tokio::test]
async fn receipts_count_the_subscriptions_of_their_topic() {
    let broker = MemoryBroker::new();
    let topic = Topic::new("counted").unwrap();
    let alone = broker.publish(&Topic::new("alone").unwrap(), Publication::new("x")).await;
    assert_eq!(alone.unwrap().subscribers, Some(0), "nobody was listening");
    let early = broker.subscribe(&topic, Cursor::Latest).await.unwrap();
    let first = broker.publish(&topic, Publication::new("1")).await.unwrap();
    assert_eq!(first.subscribers, Some(1), "a subscription from before the topic existed");
    let late = broker.subscribe(&topic, Cursor::Beginning).await.unwrap();
    let keyed = Publication::new("2").idempotency_key("k");
    assert_eq!(broker.publish(&topic, keyed.clone()).await.unwrap().subscribers, Some(2));
    assert_eq!(broker.publish(&topic, keyed).await.unwrap().subscribers, None, "a replay");
    drop((early, late));
    let after = broker.publish(&topic, Publication::new("3")).await.unwrap();
    assert_eq!(after.subscribers, Some(0), "dropped subscriptions are not counted");
}
