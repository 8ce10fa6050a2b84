//! `pushpull bench cluster`: what the Redis broker costs on a Redis Cluster of the bench's own
//! (six `redis-server` processes on 127.0.0.1) beside one Redis: the wake-ups each node
//! receives per publish when nodes follow disjoint topics, and publish latency with each
//! durability setting.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushpull::redis::{RedisBroker, RedisConfig};
use pushpull::{Cursor, Error, Publication, Publish, Subscribe, Topic};
use pushpull_chaos::{RedisCluster, RedisServer};
use serde::Serialize;

use crate::bench::bench_error;

/// Topics each node follows in the wake-up measurement.
const TOPICS_PER_NODE: usize = 4;

#[derive(Serialize)]
struct WakeRow {
    redis: &'static str,
    nodes: usize,
    publishes: u64,
    /// Wake-ups each node received on its topics' channels, per publish (mean over nodes).
    per_node_per_publish: f64,
    /// Wake-ups on the shared channel (a log's first message), per node.
    shared_per_node: f64,
}

#[derive(Serialize)]
struct LatencyRow {
    setup: String,
    publishes: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Runs both measurements and prints their tables (or JSON), drawing the latency plot to
/// `plot` when given.
pub(crate) async fn run(publishes: usize, plot: Option<PathBuf>, json: bool) -> Result<(), Error> {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .map_err(|e| bench_error(e.to_string()))??;
    let single = RedisServer::start()?;

    let mut wake_rows = Vec::new();
    for nodes in 1..=3 {
        wake_rows.push(
            wake_ups("cluster", nodes, publishes, |prefix| {
                let mut config = RedisConfig::cluster(cluster.urls());
                config.key_prefix = prefix;
                config
            })
            .await?,
        );
    }
    wake_rows.push(
        wake_ups("one Redis", 3, publishes, |prefix| {
            let mut config = RedisConfig::new(single.url());
            config.key_prefix = prefix;
            config
        })
        .await?,
    );

    let mut latency_rows = Vec::new();
    let mut series = Vec::new();
    let mut setups: Vec<(String, RedisConfig)> = Vec::new();
    setups.push(("one Redis, no persistence".into(), RedisConfig::new(single.url())));
    let fsync_everysec = RedisServer::start()?;
    for (name, value) in [("appendonly", "yes"), ("appendfsync", "everysec")] {
        fsync_everysec.command(&["CONFIG", "SET", name, value]).await?;
    }
    setups.push(("one Redis, appendfsync everysec".into(), RedisConfig::new(fsync_everysec.url())));
    let fsync_always = RedisServer::start_with(true)?;
    setups.push(("one Redis, appendfsync always".into(), RedisConfig::new(fsync_always.url())));
    setups.push(("cluster".into(), RedisConfig::cluster(cluster.urls())));
    let mut waiting = RedisConfig::cluster(cluster.urls());
    waiting.wait_replicas = 1;
    setups.push(("cluster, wait_replicas = 1".into(), waiting));
    for (setup, mut config) in setups {
        config.key_prefix = format!("bench-{}:", pushpull::Epoch::random());
        let mut latencies = publish_latencies(config, publishes).await?;
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        latency_rows.push(LatencyRow {
            setup: setup.clone(),
            publishes,
            p50_us: us(at(0.5)),
            p99_us: us(at(0.99)),
            max_us: us(*latencies.last().expect("publishes")),
        });
        series.push((setup, latencies));
    }
    if let Some(path) = &plot {
        crate::plot::latency_distribution(path, &series)?;
    }

    if json {
        let value = serde_json::json!({
            "bench": "cluster",
            "wake_ups": wake_rows,
            "publish_latency": latency_rows,
        });
        println!("{value}");
        return Ok(());
    }
    println!(
        "Wake-ups each node receives, nodes following disjoint topics ({TOPICS_PER_NODE} each):"
    );
    println!();
    println!(
        "| Redis | nodes | publishes | wake-ups per node per publish | shared-channel wake-ups per node |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in &wake_rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.0} |",
            row.redis, row.nodes, row.publishes, row.per_node_per_publish, row.shared_per_node
        );
    }
    println!();
    println!("Publish latency, one publisher, one at a time (100-byte payloads):");
    println!();
    println!("| setup | publishes | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for row in &latency_rows {
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs |",
            row.setup, row.publishes, row.p50_us, row.p99_us, row.max_us
        );
    }
    Ok(())
}

/// `nodes` brokers (as many server processes would hold) each follow topics of their own; a
/// publisher spreads `publishes` over all of them; each node's wake-ups are counted.
async fn wake_ups(
    redis: &'static str,
    nodes: usize,
    publishes: usize,
    config: impl Fn(String) -> RedisConfig,
) -> Result<WakeRow, Error> {
    let prefix = format!("bench-{}:", pushpull::Epoch::random());
    let brokers: Vec<RedisBroker> =
        (0..nodes).map(|_| RedisBroker::new(config(prefix.clone()))).collect::<Result<_, _>>()?;
    let publisher = RedisBroker::new(config(prefix.clone()))?;
    let mut topics = Vec::new();
    let mut subscriptions = Vec::new();
    for (n, broker) in brokers.iter().enumerate() {
        for t in 0..TOPICS_PER_NODE {
            let topic = Topic::new(format!("node{n}.topic{t}"))?;
            subscriptions.push(broker.subscribe(&topic, Cursor::Beginning).await?);
            topics.push(topic);
        }
    }
    // Each subscription reads everything published to its topic, so the wake-ups are not
    // counted before they came.
    let expected: Vec<usize> = (0..topics.len())
        .map(|i| publishes / topics.len() + usize::from(i < publishes % topics.len()))
        .collect();
    let readers: Vec<_> = subscriptions
        .into_iter()
        .zip(expected.clone())
        .map(|(mut subscription, count)| {
            tokio::spawn(async move {
                let mut read = 0;
                while read < count {
                    match tokio::time::timeout(Duration::from_secs(30), subscription.next()).await {
                        Ok(Some(Ok(delivery))) if delivery.as_message().is_some() => read += 1,
                        Ok(Some(Ok(_))) => {}
                        other => return Err(bench_error(format!("a reader stopped: {other:?}"))),
                    }
                }
                Ok(())
            })
        })
        .collect();
    let before: Vec<_> = brokers.iter().map(RedisBroker::wake_ups).collect();
    for i in 0..publishes {
        publisher.publish(&topics[i % topics.len()], Publication::new(vec![b'x'; 100])).await?;
    }
    for reader in readers {
        reader.await.map_err(|e| bench_error(e.to_string()))??;
    }
    // Wake-ups still in flight arrive within moments of the reads.
    let own: u64 = (publishes / nodes) as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && brokers.iter().zip(&before).any(|(b, was)| b.wake_ups().topics - was.topics < own)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut topic_wake_ups, mut shared) = (0, 0);
    for (broker, was) in brokers.iter().zip(&before) {
        let now = broker.wake_ups();
        topic_wake_ups += now.topics - was.topics;
        shared += now.shared - was.shared;
    }
    Ok(WakeRow {
        redis,
        nodes,
        publishes: publishes as u64,
        per_node_per_publish: topic_wake_ups as f64 / nodes as f64 / publishes as f64,
        shared_per_node: shared as f64 / nodes as f64,
    })
}

/// Publishes one at a time to 16 topics and times each.
async fn publish_latencies(config: RedisConfig, publishes: usize) -> Result<Vec<Duration>, Error> {
    let broker = RedisBroker::new(config)?;
    let topics: Vec<Topic> =
        (0..16).map(|t| Topic::new(format!("latency.{t}"))).collect::<Result<_, _>>()?;
    // Warm up: connections, scripts loaded on every master.
    for topic in &topics {
        broker.publish(topic, Publication::new("warm")).await?;
    }
    let mut latencies = Vec::with_capacity(publishes);
    for i in 0..publishes {
        let start = Instant::now();
        broker.publish(&topics[i % topics.len()], Publication::new(vec![b'x'; 100])).await?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}
