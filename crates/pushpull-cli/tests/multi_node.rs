//! Two `pushpull serve` processes on one Redis are one service: what is published on node A
//! reaches subscribers on node B over every transport, in order; and a subscriber whose node is
//! killed resumes on the other node from its cursor, with no loss and no duplicate.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Delivery, Publication, Topic};
use pushpull_testkit::ChaosProxy;
use pushpull_testkit::redis::RedisServer;

const LIMIT: Duration = Duration::from_secs(30);

/// A `pushpull serve` process on the Redis at `url`.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis_url: &str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushpull"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PUSHPULL_BROKER__KIND", "redis")
            .env("PUSHPULL_BROKER__URL", redis_url)
            .env_remove("PUSHPULL_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pushpull serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(LIMIT).expect("serve printed its address");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Node { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

const TRANSPORTS: [&str; 5] = ["sse", "ws", "stream", "longpoll", "poll"];

fn client_config(transport: &str, url: &str) -> ClientConfig {
    ClientConfig::from_toml(&format!(
        "transport = \"{transport}\"\nurl = \"{url}\"\n[{transport}]\n\
         request_timeout = \"5s\"\nbackoff = {{ initial = \"20ms\", max = \"300ms\" }}\n"
    ))
    .unwrap()
}

async fn next_offset(transport: &str, sub: &mut pushpull::Subscription) -> u64 {
    match tokio::time::timeout(LIMIT, sub.next()).await {
        Ok(Some(Ok(Delivery::Message(m)))) => m.offset.0,
        other => panic!("{transport}: expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_log_and_a_subscriber_survives_its_node() {
    let redis = RedisServer::start().unwrap();
    let node_a = Node::start(&redis.url());
    let mut node_b = Node::start(&redis.url());
    let proxy = Arc::new(ChaosProxy::start(node_b.addr).await.unwrap());
    let publisher =
        pushpull::connect(&ClientConfig::new("poll", format!("http://{}", node_a.addr)))
            .await
            .unwrap();

    // Subscribers on node B (through a load balancer), publishing on node A.
    let mut subscribers = Vec::new();
    for transport in TRANSPORTS {
        let client =
            pushpull::connect(&client_config(transport, &format!("http://{}", proxy.addr())))
                .await
                .unwrap();
        let topic = Topic::new(format!("nodes.{transport}")).unwrap();
        let sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
        subscribers.push((transport, topic, client, sub));
    }
    for (transport, topic, _, sub) in &mut subscribers {
        for n in 1..=3u64 {
            let receipt =
                publisher.publish(topic, Publication::new(format!("m{n}"))).await.unwrap();
            assert_eq!(receipt.offset.0, n, "offsets are dense across nodes");
        }
        for n in 1..=3u64 {
            assert_eq!(
                next_offset(transport, sub).await,
                n,
                "{transport}: published on A, read on B"
            );
        }
    }

    // Node B dies; the load balancer sends its clients to node A.
    node_b.kill();
    proxy.redirect(node_a.addr);
    for (_, topic, _, _) in &subscribers {
        for n in 4..=6 {
            publisher.publish(topic, Publication::new(format!("m{n}"))).await.unwrap();
        }
    }
    for (transport, _, _, sub) in &mut subscribers {
        for n in 4..=6u64 {
            assert_eq!(
                next_offset(transport, sub).await,
                n,
                "{transport}: resumed on A, no loss, no duplicate"
            );
        }
    }
}
