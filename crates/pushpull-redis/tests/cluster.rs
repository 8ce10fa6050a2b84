//! The Redis broker on a real Redis Cluster of the test's own (three masters, three replicas):
//! wake-ups reach only the nodes whose readers follow a topic; a master killed under live
//! subscribers, and a slot moved under them, lose nothing silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushpull_core::{
    Cursor, Delivery, Epoch, Fetch, GapReason, Publication, Publish, Subscribe, Subscription, Topic,
};
use pushpull_redis::{RedisBroker, RedisConfig};
use pushpull_testkit::redis::RedisCluster;
use tokio::sync::Mutex;

const LIMIT: Duration = Duration::from_secs(30);

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start).await.unwrap().unwrap()
}

fn node(cluster: &RedisCluster) -> RedisBroker {
    let mut config = RedisConfig::cluster(cluster.urls());
    config.key_prefix = "pp:".into();
    RedisBroker::new(config).unwrap()
}

/// Topics named so that each lives on another master (by its slot).
fn topics_on_each_master(cluster: &RedisCluster, base: &str) -> Vec<Topic> {
    let masters = cluster.masters().unwrap();
    let mut found: HashMap<u16, Topic> = HashMap::new();
    for i in 0.. {
        let topic = Topic::new(format!("{base}-{i}")).unwrap();
        let master = cluster.master_of(&format!("{{{topic}}}")).unwrap();
        found.entry(master).or_insert(topic);
        if found.len() == masters.len() {
            break;
        }
    }
    masters.iter().map(|m| found[m].clone()).collect()
}

/// What a reader has, kept as the log says it should be: every message follows the one before
/// it (same epoch, next offset), and a gap is the only way an epoch changes; a gap's cursor
/// drops what the reader had past it (messages the log lost, which it reads again as they
/// are now).
#[derive(Default)]
struct Ledger {
    epoch: Option<Epoch>,
    messages: Vec<(u64, bytes::Bytes)>,
    gaps: usize,
}

impl Ledger {
    fn apply(&mut self, delivery: Delivery) -> Result<(), String> {
        match delivery {
            Delivery::Message(message) => {
                let expected = self.messages.last().map_or(1, |(offset, _)| offset + 1);
                if message.offset.0 != expected || self.epoch.is_some_and(|e| e != message.epoch) {
                    return Err(format!(
                        "a silent hole: expected offset {expected} of {:?}, got {} of {}",
                        self.epoch, message.offset, message.epoch
                    ));
                }
                self.epoch = Some(message.epoch);
                self.messages.push((message.offset.0, message.payload));
            }
            Delivery::Gap(gap) => {
                let GapReason::EpochChanged { previous } = gap.reason else {
                    return Err(format!("an unexpected gap: {gap:?}"));
                };
                if Some(previous) != self.epoch {
                    return Err(format!("a gap from {previous}, the reader had {:?}", self.epoch));
                }
                let Cursor::After(epoch, at) = gap.cursor else {
                    return Err(format!("a gap without a position: {gap:?}"));
                };
                if let Some(missed) = gap.missed {
                    return Err(format!("retention lost nothing here, the gap says {missed:?}"));
                }
                self.messages.retain(|(offset, _)| *offset <= at.0);
                self.epoch = Some(epoch);
                self.gaps += 1;
            }
        }
        Ok(())
    }
}

/// Reads `subscription` into a ledger until the ledger fails or the test ends.
fn read_into(mut subscription: Subscription) -> Arc<Mutex<Result<Ledger, String>>> {
    let ledger = Arc::new(Mutex::new(Ok(Ledger::default())));
    let kept = ledger.clone();
    tokio::spawn(async move {
        while let Some(delivery) = subscription.next().await {
            let mut ledger = kept.lock().await;
            let Ok(state) = ledger.as_mut() else { return };
            match delivery.map_err(|e| e.to_string()).and_then(|d| state.apply(d)) {
                Ok(()) => {}
                Err(error) => {
                    *ledger = Err(error);
                    return;
                }
            }
        }
    });
    ledger
}

/// The whole log of `topic`, as a reader from the beginning would fetch it now.
async fn whole_log(broker: &RedisBroker, topic: &Topic) -> Vec<(u64, bytes::Bytes)> {
    let mut cursor = Cursor::Beginning;
    let mut log = Vec::new();
    loop {
        let page = broker.fetch(topic, cursor, 500).await.unwrap();
        assert!(page.gap.is_none() || log.is_empty(), "{:?}", page.gap);
        if page.messages.is_empty() {
            return log;
        }
        log.extend(page.messages.iter().map(|m| (m.offset.0, m.payload.clone())));
        cursor = page.next;
    }
}

/// Publishes to each topic until it has `count` messages acknowledged, retrying what fails.
async fn publish_until(broker: &RedisBroker, topics: &[Topic], count: usize, tag: &str) {
    for i in 0..count {
        for topic in topics {
            // The same key for every attempt: one that did store (its answer lost) is not
            // stored again.
            let publication = || {
                Publication::new(format!("{tag}-{i}")).idempotency_key(format!("{topic}-{tag}-{i}"))
            };
            let deadline = Instant::now() + LIMIT;
            while let Err(error) = broker.publish(topic, publication()).await {
                assert!(error.is_retryable(), "{error}");
                assert!(Instant::now() < deadline, "no publish took within {LIMIT:?}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until each reader has what its topic's log has, and checks they agree exactly.
async fn readers_agree_with_the_logs(
    broker: &RedisBroker,
    topics: &[Topic],
    ledgers: &[Arc<Mutex<Result<Ledger, String>>>],
) -> usize {
    let mut gaps = 0;
    for (topic, ledger) in topics.iter().zip(ledgers) {
        let log = whole_log(broker, topic).await;
        let deadline = Instant::now() + LIMIT;
        loop {
            {
                let ledger = ledger.lock().await;
                let state = ledger.as_ref().unwrap_or_else(|e| panic!("{topic}: {e}"));
                if state.messages == log {
                    gaps += state.gaps;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{topic}: the reader has {} messages (last {:?}), the log {} (last {:?})",
                    state.messages.len(),
                    state.messages.last().map(|m| m.0),
                    log.len(),
                    log.last().map(|m| m.0)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    gaps
}

#[tokio::test]
async fn a_node_hears_the_wake_ups_of_the_topics_its_readers_follow_and_no_others() {
    let cluster = start_cluster().await;
    let nodes: Vec<RedisBroker> = (0..3).map(|_| node(&cluster)).collect();
    // Each node follows two topics of its own.
    let topics: Vec<Vec<Topic>> = (0..3)
        .map(|n| (0..2).map(|t| Topic::new(format!("node{n}-topic{t}")).unwrap()).collect())
        .collect();
    let mut subscriptions = Vec::new();
    for (node, own) in nodes.iter().zip(&topics) {
        let mut mine = Vec::new();
        for topic in own {
            mine.push(node.subscribe(topic, Cursor::Beginning).await.unwrap());
        }
        subscriptions.push(mine);
    }
    let before: Vec<u64> = nodes.iter().map(|n| n.wake_ups().topics).collect();
    // Every topic gets ten messages, all published through node 0.
    for topic in topics.iter().flatten() {
        for i in 0..10 {
            nodes[0].publish(topic, Publication::new(format!("m{i}"))).await.unwrap();
        }
    }
    for subscription in subscriptions.iter_mut().flatten() {
        for _ in 0..10 {
            let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap();
            assert!(delivery.unwrap().unwrap().as_message().is_some());
        }
    }
    // Wake-ups are in flight a little after the reads: wait for each node's twenty, then
    // check none came for the others' topics.
    let deadline = Instant::now() + LIMIT;
    for (n, node) in nodes.iter().enumerate() {
        while node.wake_ups().topics - before[n] < 20 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (n, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.wake_ups().topics - before[n],
            20,
            "node {n} follows two topics of ten messages each, and hears nothing of the others'"
        );
    }

    // Node 1's readers leave: once it has unsubscribed, it hears nothing of its old topics.
    drop(subscriptions.remove(1));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let heard = nodes[1].wake_ups().topics;
    for topic in &topics[1] {
        nodes[0].publish(topic, Publication::new("after")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nodes[1].wake_ups().topics, heard, "a node no reader of a topic is on hears none");
    assert_eq!(nodes[1].subscriber_count(), 0);
}

#[tokio::test]
async fn a_master_killed_under_live_subscribers_loses_nothing_silently() {
    let mut cluster = start_cluster().await;
    let broker = node(&cluster);
    let reader = node(&cluster);
    let topics = topics_on_each_master(&cluster, "failover");
    let mut ledgers = Vec::new();
    for topic in &topics {
        ledgers.push(read_into(reader.subscribe(topic, Cursor::Beginning).await.unwrap()));
    }
    publish_until(&broker, &topics, 20, "before").await;

    // Publishers keep going while the first topic's master dies and its replica takes over.
    let publishing = {
        let (broker, topics) = (broker.clone(), topics.clone());
        tokio::spawn(async move { publish_until(&broker, &topics, 60, "during").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let master = cluster.master_of(&format!("{{{}}}", topics[0])).unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill_master(master).unwrap();
        cluster
    })
    .await
    .unwrap();
    publishing.await.unwrap();
    publish_until(&broker, &topics, 20, "after").await;
    assert_ne!(cluster.master_of(&format!("{{{}}}", topics[0])).unwrap(), master);

    let gaps = readers_agree_with_the_logs(&broker, &topics, &ledgers).await;
    // The killed master's topic changed epoch (its replica cannot know what it missed), and
    // its reader was told; the others' did not.
    assert!(gaps >= 1, "the reader of the failed-over topic got the new epoch's gap");
    let log = whole_log(&broker, &topics[0]).await;
    assert!(log.iter().any(|(_, p)| p.starts_with(b"after")), "publishing went on");
}

#[tokio::test]
async fn a_slot_moved_under_live_subscribers_loses_and_repeats_nothing() {
    let cluster = start_cluster().await;
    let broker = node(&cluster);
    let reader = node(&cluster);
    let topic = Topic::new("moving").unwrap();
    let ledger = read_into(reader.subscribe(&topic, Cursor::Beginning).await.unwrap());
    let topics = vec![topic.clone()];
    publish_until(&broker, &topics, 20, "before").await;
    let publishing = {
        let (broker, topics) = (broker.clone(), topics.clone());
        tokio::spawn(async move { publish_until(&broker, &topics, 100, "during").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = format!("{{{topic}}}");
    let from = cluster.master_of(&key).unwrap();
    let (cluster, to) = tokio::task::spawn_blocking(move || {
        let to = cluster.move_slot_of(&key).unwrap();
        (cluster, to)
    })
    .await
    .unwrap();
    assert_ne!(from, to);
    publishing.await.unwrap();
    publish_until(&broker, &topics, 20, "after").await;
    assert_eq!(cluster.master_of(&format!("{{{topic}}}")).unwrap(), to);

    readers_agree_with_the_logs(&broker, &topics, std::slice::from_ref(&ledger)).await;
    // Every acknowledged message is in the log once, in publishing order.
    let log = whole_log(&broker, &topic).await;
    let payloads: Vec<String> =
        log.iter().map(|(_, p)| String::from_utf8(p.to_vec()).unwrap()).collect();
    let expected: Vec<String> = (0..20)
        .map(|i| format!("before-{i}"))
        .chain((0..100).map(|i| format!("during-{i}")))
        .chain((0..20).map(|i| format!("after-{i}")))
        .collect();
    assert_eq!(payloads, expected, "nothing lost, nothing twice");
}
