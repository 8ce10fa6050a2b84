//! A WebSocket client this project did not write (the `ws` package from npm), speaking only
//! what docs/protocol/websocket.md says: it subscribes to two topics, publishes, fetches, and
//! resumes from its last cursors after the server drops the connection.

mod support;

use std::path::Path;
use std::process::Stdio;

use pushpull::{Publication, Publish, ServerConfig, Topic};
use pushpull_testkit::ChaosProxy;
use support::{ClientLines, LIMIT, next_line};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What node printed next of `kind` (anything, when `kind` is empty), skipping other lines;
/// an error the server answered fails the test.
async fn next_of(lines: &mut ClientLines, kind: &str) -> serde_json::Value {
    let line = next_line(lines, kind, |line| {
        line["type"] == "error" || kind.is_empty() || line["type"] == kind
    })
    .await;
    assert_ne!(line["type"], "error", "the server answered an error: {line}");
    line
}

#[tokio::test]
async fn node_ws_client_follows_two_topics_and_resumes_after_a_drop() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/ws").exists(),
        "the npm packages are missing: run ./scripts/test, which installs them"
    );
    let config = ServerConfig::default();
    let broker = pushpull::broker(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_with(listener, broker.clone(), &config).unwrap();
    let proxy = ChaosProxy::start(server.local_addr()).await.unwrap();

    let url = format!("ws://{}/v1/ws", proxy.addr());
    let mut node = Command::new("node")
        .arg(js.join("ws-client.mjs"))
        .args([&url, "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();

    let open = next_of(&mut lines, "open").await;
    assert_eq!(open["protocol"], "pushpull.v1", "the subprotocol was echoed");
    // The client published a1 and b1 itself, and fetched a; answers and pushed messages may
    // interleave in any order.
    let mut first = Vec::new();
    let mut page = None;
    while first.len() < 2 || page.is_none() {
        let line = next_of(&mut lines, "").await;
        match line["type"].as_str() {
            Some("message") => first.push(line["data"].as_str().unwrap().to_owned()),
            Some("page") => page = Some(line),
            _ => {}
        }
    }
    first.sort();
    assert_eq!(first, ["a1", "b1"]);
    assert_eq!(page.unwrap()["data"], serde_json::json!(["a1"]));

    // Drop the socket and keep the server unreachable while both topics move on.
    proxy.set_refusing(true);
    proxy.sever();
    next_of(&mut lines, "close").await;
    for topic in ["a", "b"] {
        let topic = Topic::new(topic).unwrap();
        broker.publish(&topic, Publication::new(format!("{topic}2"))).await.unwrap();
    }
    proxy.set_refusing(false);

    next_of(&mut lines, "open").await;
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let message = next_of(&mut lines, "message").await;
        resumed.push(message["data"].as_str().unwrap().to_owned());
    }
    resumed.sort();
    assert_eq!(resumed, ["a2", "b2"], "resumed from its cursors: nothing lost, nothing repeated");
    let status = tokio::time::timeout(LIMIT, node.wait()).await.expect("node exited").unwrap();
    assert!(status.success());
}
