//! Two `pushpull serve` processes on one Redis are one service: what is published on node A
//! reaches subscribers on node B over every transport, in order; and a subscriber whose node is
//! killed resumes on the other node from its cursor, with no loss and no duplicate.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Delivery, Publication, Topic};
use pushpull_testkit::ChaosProxy;
use pushpull_testkit::redis::RedisServer;

mod support;

use support::LIMIT;

/// A `pushpull serve` process on the Redis at `url`.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis_url: &str) -> Node {
        Self::start_with(redis_url, &[])
    }

    fn start_with(redis_url: &str, more: &[(&str, &str)]) -> Node {
        let schedule = r#"["0s", "50ms", "200ms", "500ms", "1s", "2s", "5s", "5s"]"#;
        let mut env = vec![
            ("PUSHPULL_BROKER__KIND", "redis"),
            ("PUSHPULL_BROKER__URL", redis_url),
            ("PUSHPULL_TRANSPORTS__WEBHOOK__ALLOW_LOOPBACK", "true"),
            ("PUSHPULL_TRANSPORTS__WEBHOOK__SCHEDULE", schedule),
        ];
        env.extend_from_slice(more);
        let (child, url) = support::serve(&[], &env);
        let addr = url.trim_start_matches("http://").parse().expect("an address");
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

/// nginx, with the configuration docs/deploying.md gives, in front of `nodes`.
struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    fn start(nodes: &[SocketAddr]) -> Nginx {
        let dir =
            std::env::temp_dir().join(format!("pushpull-nginx-{}", pushpull::Epoch::random()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let servers: String = nodes.iter().map(|a| format!("        server {a};\n")).collect();
        let config = format!(
            r#"
# One process: killing it leaves no orphaned worker behind.
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    upstream pushpull {{
{servers}        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pushpull;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 90s;
        }}
        location = /v1/ws {{
            proxy_pass http://pushpull;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 90s;
        }}
    }}
}}
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        // Debian installs it in /usr/sbin, which is not on every PATH.
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("nginx");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is installed (./scripts/test installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + LIMIT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The test's nginx is one process with no children, so stopping it stops everything.
        let children = format!("/proc/{0}/task/{0}/children", child.id());
        assert_eq!(std::fs::read_to_string(children).unwrap_or_default().trim(), "");
        Nginx { child, dir, addr }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx_as_the_deployment_guide_configures_it() {
    let redis = RedisServer::start().unwrap();
    let node_a = Node::start(&redis.url());
    let mut node_b = Node::start(&redis.url());
    let nginx = Nginx::start(&[node_a.addr, node_b.addr]);
    let url = format!("http://{}", nginx.addr);
    let publisher = pushpull::connect(&ClientConfig::new("poll", &url)).await.unwrap();
    let mut subscribers = Vec::new();
    for transport in ["sse", "ws", "stream", "longpoll"] {
        let client = pushpull::connect(&client_config(transport, &url)).await.unwrap();
        let topic = Topic::new(format!("nginx.{transport}")).unwrap();
        let sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
        subscribers.push((transport, topic, client, sub));
    }
    for (transport, topic, _, sub) in &mut subscribers {
        for n in 1..=3u64 {
            publisher.publish(topic, Publication::new(format!("m{n}"))).await.unwrap();
        }
        for n in 1..=3u64 {
            assert_eq!(next_offset(transport, sub).await, n, "{transport} through nginx");
        }
    }
    // One node goes away; nginx sends new requests and reconnections to the other.
    node_b.kill();
    for (transport, topic, _, sub) in &mut subscribers {
        for n in 4..=5u64 {
            let published = loop {
                match publisher.publish(topic, Publication::new(format!("m{n}"))).await {
                    Ok(receipt) => break receipt,
                    Err(error) if error.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => panic!("{error}"),
                }
            };
            assert_eq!(published.offset.0, n);
        }
        for n in 4..=5u64 {
            assert_eq!(next_offset(transport, sub).await, n, "{transport} after a node died");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_endpoint_is_delivered_by_another_node_when_its_node_dies() {
    let redis = RedisServer::start().unwrap();
    let mut node_a = Node::start(&redis.url());
    let proxy = Arc::new(ChaosProxy::start(node_a.addr).await.unwrap());
    let url = format!("http://{}", proxy.addr());
    let receiver = pushpull::connect(
        &ClientConfig::from_toml(&format!(
            "transport = \"webhook\"\nurl = \"{url}\"\n[webhook]\ncheck_interval = \"200ms\"\n"
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let topic = Topic::new("hooks.across").unwrap();
    // Registered through node A, which delivers it (it is the only node).
    let mut sub = receiver.subscribe(&topic, Cursor::Beginning).await.unwrap();
    let publisher = pushpull::connect(&ClientConfig::new("poll", &url)).await.unwrap();
    for n in 1..=3 {
        publisher.publish(&topic, Publication::new(format!("m{n}"))).await.unwrap();
    }
    for n in 1..=3u64 {
        assert_eq!(next_offset("webhook", &mut sub).await, n);
    }

    // Node B joins; node A dies while messages keep coming, published through B.
    let node_b = Node::start(&redis.url());
    proxy.redirect(node_b.addr);
    let publisher =
        pushpull::connect(&ClientConfig::new("poll", format!("http://{}", node_b.addr)))
            .await
            .unwrap();
    let publishing = tokio::spawn({
        let topic = topic.clone();
        async move {
            for n in 4..=12 {
                publisher.publish(&topic, Publication::new(format!("m{n}"))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    node_a.kill();
    // B takes the endpoint over when A's lease runs out, from the cursor A saved: every
    // message arrives, each once (the receiver drops a repeated webhook-id).
    for n in 4..=12u64 {
        assert_eq!(next_offset("webhook", &mut sub).await, n, "after the delivering node died");
    }
    publishing.await.unwrap();
    let endpoints: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new("curl")
            .args(["-s", &format!("http://{}/v1/webhooks", node_b.addr)])
            .output()
            .expect("curl is installed")
            .stdout,
    )
    .unwrap();
    assert_eq!(
        endpoints.as_array().map(Vec::len),
        Some(1),
        "the registration is in Redis: {endpoints}"
    );
    assert!(endpoints[0]["node"].is_string(), "a node delivers it: {endpoints}");
}

/// The next join or leave on a presence log.
async fn next_presence(log: &mut pushpull::Subscription) -> (String, String) {
    match tokio::time::timeout(LIMIT, log.next()).await {
        Ok(Some(Ok(Delivery::Message(m)))) => {
            let member: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let client = member["client"].as_str().unwrap().to_owned();
            (m.event.as_deref().unwrap_or_default().to_owned(), client)
        }
        other => panic!("expected a presence event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_on_the_other_node() {
    let redis = RedisServer::start().unwrap();
    // Members under a 3-second lease: a dead node's leave within about four seconds.
    let lease = [("PUSHPULL_BROKER__PRESENCE_LEASE", "3s")];
    let node_a = Node::start_with(&redis.url(), &lease);
    let mut node_b = Node::start_with(&redis.url(), &lease);
    let (url_a, url_b) = (format!("http://{}", node_a.addr), format!("http://{}", node_b.addr));
    let topic = Topic::new("presence.kill").unwrap();
    let watcher = pushpull::connect(&client_config("sse", &url_a)).await.unwrap();
    let presence = watcher.presence().expect("the SSE client tells presence");
    let start = presence.snapshot(&topic).await.unwrap();
    assert!(start.members.is_empty(), "{start:?}");
    let mut log = watcher.subscribe(&topic.presence(), start.cursor).await.unwrap();

    // One member on node A, then two on node B.
    let on_a = pushpull::connect(&client_config("ws", &url_a)).await.unwrap();
    let _member_a = on_a.subscribe(&topic, Cursor::Latest).await.unwrap();
    let (event, member_a) = next_presence(&mut log).await;
    assert_eq!(event, "join");
    let mut members_b = Vec::new();
    let mut held_b = Vec::new();
    for transport in ["sse", "ws"] {
        let client = pushpull::connect(&client_config(transport, &url_b)).await.unwrap();
        held_b.push(client.subscribe(&topic, Cursor::Latest).await.unwrap());
        held_b.push(client.subscribe(&topic, Cursor::Latest).await.unwrap());
        let _ = client;
    }
    for _ in 0..4 {
        let (event, member) = next_presence(&mut log).await;
        assert_eq!(event, "join");
        members_b.push(member);
    }
    // Counted right from either node.
    for url in [&url_a, &url_b] {
        let client = pushpull::connect(&client_config("poll", url)).await.unwrap();
        let stats = client.presence().unwrap().stats(&topic).await.unwrap();
        assert_eq!(stats.members, 5, "five members, seen from {url}");
    }

    // Node B dies without a word (SIGKILL): its members leave on node A, each once.
    node_b.kill();
    let mut left = Vec::new();
    for _ in 0..4 {
        let (event, member) = next_presence(&mut log).await;
        assert_eq!(event, "leave", "only node B's members leave");
        left.push(member);
    }
    left.sort();
    members_b.sort();
    assert_eq!(left, members_b, "every member of the dead node left, once");
    let now = presence.snapshot(&topic).await.unwrap();
    let clients: Vec<&str> = now.members.iter().map(|m| m.client.as_str()).collect();
    assert_eq!(clients, [member_a.as_str()], "node A's member stays");
    drop(held_b);
}
