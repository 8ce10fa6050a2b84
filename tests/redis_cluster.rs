//! Two servers on one Redis Cluster (three masters, three replicas, the test's own): readers
//! of every transport on one node, publishers on the other; a master is killed under them,
//! its replica takes over, and every reader ends with exactly what the logs hold, told of each
//! epoch change by a gap.

mod support;

use std::time::{Duration, Instant};

use pushpull::{BrokerConfig, ClientConfig, Cursor, Publication, ServerConfig, Topic};
use pushpull_testkit::read_into;
use pushpull_testkit::redis::RedisCluster;

const LIMIT: Duration = Duration::from_secs(30);
const TRANSPORTS: [&str; 6] = ["sse", "ws", "stream", "longpoll", "poll", "webhook"];

fn config(cluster: &RedisCluster) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.broker = BrokerConfig::new("redis").set("cluster", cluster.urls());
    // The webhook client's receiver listens on 127.0.0.1.
    config
        .transports
        .configure::<pushpull::webhook::WebhookServer>(|webhook| webhook.allow_loopback = true)
        .unwrap();
    config
}

/// The whole log of `topic`, fetched through `client`.
async fn whole_log(client: &dyn pushpull::Client, topic: &Topic) -> Vec<(u64, bytes::Bytes)> {
    let mut cursor = Cursor::Beginning;
    let mut log = Vec::new();
    loop {
        let page = client.fetch(topic, cursor, 500).await.unwrap();
        if page.messages.is_empty() {
            return log;
        }
        log.extend(page.messages.iter().map(|m| (m.offset.0, m.payload.clone())));
        cursor = page.next;
    }
}

async fn publish_round(client: &dyn pushpull::Client, topics: &[Topic], tag: &str, i: usize) {
    for topic in topics {
        let key = format!("{topic}-{tag}-{i}");
        let deadline = Instant::now() + LIMIT;
        loop {
            let publication = Publication::new(format!("{tag}-{i}")).idempotency_key(&key);
            match client.publish(topic, publication).await {
                Ok(_) => break,
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("{topic}: {error}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_readers_of_every_transport_on_another_node_loses_nothing_silently() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap().unwrap();
    let publisher_node = support::server(config(&cluster)).await;
    let reader_node = support::server(config(&cluster)).await;
    let publisher = pushpull::connect(&ClientConfig::new(
        "poll",
        format!("http://{}", publisher_node.local_addr()),
    ))
    .await
    .unwrap();

    // A topic on each master (by its slot).
    let mut topics: Vec<Topic> = Vec::new();
    let mut masters = Vec::new();
    for i in 0.. {
        let topic = Topic::new(format!("orders-{i}")).unwrap();
        let master = cluster.master_of(&format!("{{{topic}}}")).unwrap();
        if !masters.contains(&master) {
            masters.push(master);
            topics.push(topic);
        }
        if masters.len() == 3 {
            break;
        }
    }

    let reader_url = format!("http://{}", reader_node.local_addr());
    let mut ledgers = Vec::new();
    let mut clients = Vec::new();
    for transport in TRANSPORTS {
        let mut client_config = ClientConfig::new(transport, &reader_url);
        if transport == "webhook" {
            // Endpoints registered just before the kill can be lost with it (replication is
            // asynchronous; their records share one slot): the client finds its endpoint gone
            // at its next check and registers it again from its last cursor. Check often, so
            // that this recovery, not its 30 s default, is what the test waits for.
            let mut webhook = toml::Table::new();
            webhook.insert("check_interval".into(), "1s".into());
            client_config.settings.insert("webhook".into(), webhook);
        }
        let client = pushpull::connect(&client_config).await.unwrap();
        for topic in &topics {
            let subscription = client.subscribe(topic, Cursor::Beginning).await.unwrap();
            ledgers.push((transport, topic.clone(), read_into(subscription)));
        }
        clients.push(client);
    }
    for i in 0..10 {
        publish_round(publisher.as_ref(), &topics, "before", i).await;
    }

    let killed = masters[0];
    let killing = tokio::task::spawn_blocking(move || {
        cluster.kill_master(killed).unwrap();
        cluster
    });
    let mut i = 0;
    while !killing.is_finished() {
        publish_round(publisher.as_ref(), &topics, "during", i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cluster = killing.await.unwrap();
    assert_ne!(cluster.master_of(&format!("{{{}}}", topics[0])).unwrap(), killed);
    for i in 0..10 {
        publish_round(publisher.as_ref(), &topics, "after", i).await;
    }

    for (transport, topic, ledger) in &ledgers {
        let log = whole_log(publisher.as_ref(), topic).await;
        assert!(log.iter().any(|(_, p)| p.starts_with(b"after")), "{topic}: publishing went on");
        let deadline = Instant::now() + LIMIT;
        loop {
            {
                let ledger = ledger.lock().await;
                let state = ledger.as_ref().unwrap_or_else(|e| panic!("{transport} {topic}: {e}"));
                if state.messages == log {
                    if *topic == topics[0] {
                        assert!(state.gaps >= 1, "{transport}: the new epoch came with a gap");
                    }
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{transport} {topic}: the reader has {} messages, the log {}",
                    state.messages.len(),
                    log.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Clients and servers go before the cluster: a webhook endpoint's removal on a Redis
    // already stopped would wait out its retries.
    drop(ledgers);
    drop(clients);
    drop(publisher);
    drop(reader_node);
    drop(publisher_node);
    drop(cluster);
}
