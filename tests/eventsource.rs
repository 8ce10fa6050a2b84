//! A browser-compatible EventSource this project did not write (the `eventsource` package from
//! npm, which follows the WHATWG spec) reads the SSE transport, and resumes with
//! `Last-Event-ID` after the connection drops, losing and repeating nothing.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pushpull::{Publication, Publish, ServerConfig, Topic};
use pushpull_testkit::ChaosProxy;
use support::{ClientLines, LIMIT, next_line};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What node printed next of `kind` (`event` for any event), skipping other lines.
async fn next_of(lines: &mut ClientLines, kind: &str) -> serde_json::Value {
    next_line(lines, kind, |line| {
        let is_event = line["type"] != "open" && line["type"] != "error";
        line["type"] == kind || (kind == "event" && is_event)
    })
    .await
}

/// A server whose SSE retry is short, its broker, and a chaos proxy in front of it.
async fn start() -> (std::sync::Arc<dyn pushpull::Broker>, pushpull::RunningServer, ChaosProxy) {
    let mut config = ServerConfig::default();
    config
        .transports
        .configure::<pushpull::sse::SseServer>(|c| c.retry = Duration::from_millis(100))
        .unwrap();
    let broker = pushpull::broker(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_with(listener, broker.clone(), &config).unwrap();
    let proxy = ChaosProxy::start(server.local_addr()).await.unwrap();
    (broker, server, proxy)
}

/// The npm `eventsource` package following `url` until it has seen `count` events, and the
/// lines it prints.
fn eventsource(url: &str, count: usize) -> (tokio::process::Child, ClientLines) {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/eventsource").exists(),
        "the npm packages are missing: run ./scripts/test, which installs them"
    );
    let mut node = Command::new("node")
        .arg(js.join("eventsource-client.mjs"))
        .args([url, &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let lines = BufReader::new(node.stdout.take().unwrap()).lines();
    (node, lines)
}

#[tokio::test]
async fn node_eventsource_resumes_with_last_event_id() {
    let (broker, _server, proxy) = start().await;
    let topic = Topic::new("prices").unwrap();

    // No `after=`: the stream starts at `latest`; only Last-Event-ID can bring back what is
    // published while the client is away.
    let url = format!("http://{}/v1/topics/prices/events", proxy.addr());
    let (mut node, mut lines) = eventsource(&url, 6);

    next_of(&mut lines, "open").await;
    let mut cursors = Vec::new();
    for n in 1..=3 {
        let publication = Publication::new(format!("{n}.00")).event("price");
        cursors.push(broker.publish(&topic, publication).await.unwrap().cursor());
    }
    for n in 1..=3 {
        let event = next_of(&mut lines, "event").await;
        assert_eq!(event["type"], "price");
        assert_eq!(event["data"], format!("{n}.00"));
        assert_eq!(event["lastEventId"], cursors[n - 1].to_string());
    }

    // Cut the connection and keep the server unreachable while three more are published.
    proxy.set_refusing(true);
    proxy.sever();
    next_of(&mut lines, "error").await;
    for n in 4..=6 {
        let publication = Publication::new(format!("{n}.00")).event("price");
        cursors.push(broker.publish(&topic, publication).await.unwrap().cursor());
    }
    proxy.set_refusing(false);

    next_of(&mut lines, "open").await;
    for n in 4..=6 {
        let event = next_of(&mut lines, "event").await;
        assert_eq!(
            event["data"],
            format!("{n}.00"),
            "resumed after the last event, nothing repeated"
        );
        assert_eq!(event["lastEventId"], cursors[n - 1].to_string());
    }
    let status = tokio::time::timeout(LIMIT, node.wait()).await.expect("node exited").unwrap();
    assert!(status.success());
}

/// One stock EventSource follows 20 topics on one URL; the connection is cut while every
/// topic gets more; it resumes by itself with the cursor set it kept as `Last-Event-ID`, and
/// each topic's messages arrive once each, in order.
#[tokio::test]
async fn node_eventsource_resumes_twenty_topics_on_one_stream() {
    const TOPICS: usize = 20;
    let (broker, _server, proxy) = start().await;
    let topics: Vec<Topic> =
        (0..TOPICS).map(|n| Topic::new(format!("room.{n}")).unwrap()).collect();
    let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let url = format!("http://{}/v1/events?{}", proxy.addr(), query.join("&"));
    let (mut node, mut lines) = eventsource(&url, TOPICS * 6);
    next_of(&mut lines, "open").await;

    let publish_round = async |round: std::ops::RangeInclusive<usize>| {
        for n in round {
            for topic in &topics {
                broker.publish(topic, Publication::new(format!("{topic}/{n}"))).await.unwrap();
            }
        }
    };
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); TOPICS];
    let mut longest_id = 0;
    let mut record = |event: serde_json::Value| {
        let data = event["data"].as_str().expect("data");
        let (topic, n) = data.split_once('/').expect("TOPIC/N");
        let index: usize = topic.strip_prefix("room.").unwrap().parse().unwrap();
        seen[index].push(n.parse().unwrap());
        longest_id = longest_id.max(event["lastEventId"].as_str().unwrap().len());
    };
    publish_round(1..=3).await;
    for _ in 0..TOPICS * 3 {
        record(next_of(&mut lines, "event").await);
    }

    // Cut the connection, keep the server unreachable while three more go to every topic.
    proxy.set_refusing(true);
    proxy.sever();
    next_of(&mut lines, "error").await;
    publish_round(4..=6).await;
    proxy.set_refusing(false);
    next_of(&mut lines, "open").await;
    for _ in 0..TOPICS * 3 {
        record(next_of(&mut lines, "event").await);
    }
    for (index, numbers) in seen.iter().enumerate() {
        assert_eq!(numbers, &(1..=6).collect::<Vec<_>>(), "room.{index}: in order, once each");
    }
    assert!(longest_id < 1024, "the cursor set of 20 topics is {longest_id} bytes");
    let status = tokio::time::timeout(LIMIT, node.wait()).await.expect("node exited").unwrap();
    assert!(status.success());
}
