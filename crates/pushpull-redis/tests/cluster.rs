//! The Redis broker on a real Redis Cluster of the test's own (three masters, three replicas):
//! wake-ups reach only the nodes whose readers follow a topic; a master killed under live
//! subscribers, and a slot moved under them, lose nothing silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushpull_core::{Cursor, Fetch, Publication, Publish, Subscribe, Topic};
use pushpull_redis::{RedisBroker, RedisConfig};
use pushpull_testkit::redis::RedisCluster;
use pushpull_testkit::{Ledger, read_into};
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

    // Node 1's readers leave: its subscriptions to their channels end (as Redis itself counts
    // them: nobody else follows those topics), and it hears nothing of them any more.
    let subscribers = |topic: &Topic| {
        let channel = format!("pp:{{{topic}}}:wake");
        let master = cluster.master_of(&format!("{{{topic}}}")).unwrap();
        let answer = RedisCluster::query(master, &["PUBSUB", "SHARDNUMSUB", &channel]).unwrap();
        redis::from_redis_value::<(String, u64)>(answer).unwrap().1
    };
    for topic in &topics[1] {
        assert_eq!(subscribers(topic), 1, "node 1 alone subscribes {topic}'s channel");
    }
    drop(subscriptions.remove(1));
    for topic in &topics[1] {
        let deadline = Instant::now() + LIMIT;
        loop {
            if subscribers(topic) == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "node 1 still subscribes {topic}'s channel");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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

#[tokio::test]
async fn a_publish_waits_for_its_replica_and_says_so_when_too_few_took_it() {
    let cluster = start_cluster().await;
    let topic = Topic::new("durable").unwrap();
    let with_wait = |replicas: u32, timeout: Duration| {
        let mut config = RedisConfig::cluster(cluster.urls());
        config.key_prefix = "pp:".into();
        config.wait_replicas = replicas;
        config.wait_timeout = timeout;
        config.response_timeout = timeout + Duration::from_secs(1);
        RedisBroker::new(config).unwrap()
    };
    // Each master has one replica: waiting for it acknowledges (a replica answers the
    // master's request for an acknowledgement at once; the bound is for a loaded machine).
    let one = with_wait(1, LIMIT);
    let receipt = one.publish(&topic, Publication::new("kept")).await.unwrap();
    assert_eq!(receipt.offset.0, 1);

    // Two are asked for: the publish is stored on the master, and the publisher is told it
    // may not survive a failover; sending it again stores nothing more.
    // Only one replica exists: the wait always runs out, so a short one.
    let two = with_wait(2, Duration::from_millis(300));
    for _ in 0..2 {
        let error = two
            .publish(&topic, Publication::new("unsure").idempotency_key("unsure-1"))
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error}");
        let text = error.to_string();
        assert!(text.contains("1 of the 2 replicas") && text.contains("wait_replicas"), "{text}");
    }
    let log = whole_log(&one, &topic).await;
    let payloads: Vec<&[u8]> = log.iter().map(|(_, p)| p.as_ref()).collect();
    assert_eq!(payloads, [b"kept".as_slice(), b"unsure"], "stored once, on the master");
}

#[tokio::test]
async fn a_master_that_comes_back_as_a_replica_is_not_written_to() {
    // redis-rs sends READONLY on every cluster connection, and Redis lets a replica run a
    // script in that mode (a script is not flagged as a write), which then fails at its first
    // write instead of redirecting: the client must learn the new master all the same.
    let cluster = start_cluster().await;
    let broker = node(&cluster);
    let topic = Topic::new("returning").unwrap();
    broker.publish(&topic, Publication::new("first")).await.unwrap();
    let master = cluster.master_of(&format!("{{{topic}}}")).unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.kill_master(master)?;
        cluster.restart_node(master)?;
        Ok::<_, pushpull_core::Error>(cluster)
    })
    .await
    .unwrap()
    .unwrap();
    assert_ne!(cluster.master_of(&format!("{{{topic}}}")).unwrap(), master);
    for i in 0..5 {
        let published = broker.publish(&topic, Publication::new(format!("again-{i}"))).await;
        assert!(published.is_ok(), "publish {i} after the old master returned: {published:?}");
    }
}
