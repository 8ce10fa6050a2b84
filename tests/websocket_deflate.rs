//! permessage-deflate judged by a client this project did not write (`websockets` from PyPI):
//! it agrees to the server's terms (no context takeover either way), compresses what it sends,
//! and reads what the server compresses.

mod support;

use pushpull::ServerConfig;
use support::{LIMIT, next_line};

#[tokio::test]
async fn a_third_party_client_agrees_compresses_and_inflates() {
    let server = support::server(ServerConfig::default()).await;
    let url = format!("ws://{}/v1/ws", server.local_addr());
    let (mut python, mut lines) = support::python("ws_deflate.py", "websockets", &[&url]);
    let agreed = next_line(&mut lines, "agreed", |l| l["type"] == "agreed").await;
    assert_eq!(agreed["extensions"][0], "permessage-deflate", "{agreed}");
    let header = agreed["header"].as_str().unwrap_or_default();
    assert!(header.contains("client_no_context_takeover"), "{agreed}");
    let answer = next_line(&mut lines, "answer", |l| l["type"] == "answer").await;
    assert_eq!(answer["answer"]["op"], "subscribed", "{answer}");
    let mut published = Vec::new();
    let mut pushed = Vec::new();
    while published.len() + pushed.len() < 4 {
        let line = next_line(&mut lines, "frame", |l| l["type"] == "frame").await;
        let frame = &line["frame"];
        match frame["op"].as_str() {
            Some("published") => published.push(frame["id"].as_str().unwrap().to_owned()),
            Some("message") => pushed.push(frame["data"].as_str().unwrap().to_owned()),
            _ => panic!("an unexpected frame: {frame}"),
        }
    }
    published.sort();
    assert_eq!(published, ["p1", "p2"], "both compressed publishes were read");
    for (n, data) in pushed.iter().enumerate() {
        let expected = format!("{}: ", n + 1) + &"words that repeat and compress well, ".repeat(50);
        assert_eq!(data, &expected, "pushed back compressed, read whole and in order");
    }
    let status = tokio::time::timeout(LIMIT, python.wait()).await.expect("exited").unwrap();
    assert!(status.success());
}
