//! Presence over the wire, from a client's side: who follows a topic, what a client tells
//! about itself, the bounds (members per topic, `info` size, client ids) with the errors that
//! say what was wrong, and presence turned off for a server or a family of topics.

mod support;

use std::net::SocketAddr;

use pushpull::ServerConfig;
use support::{LIMIT, Reply, get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[presence]
max_members = 2
max_info = 32

[[topics]]
pattern = "private:*"
presence = false
"#;

/// Opens an event stream (kept open while the socket is) and reads its head: the status, and
/// the whole reply when the server refused it.
async fn open_stream(addr: SocketAddr, path: &str) -> (TcpStream, Reply) {
    tokio::time::timeout(LIMIT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.unwrap();
            bytes.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&bytes);
            let Some(end) = text.find("\r\n\r\n") else { continue };
            let status: u16 = text[9..12].parse().unwrap();
            // A refusal has a JSON body of the length it declares.
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned)
                })
                .and_then(|l| l.trim().parse::<usize>().ok());
            if status == 200 {
                // The stream goes on: its head is what there is to read.
                return (stream, Reply { status, headers: Vec::new(), body: Vec::new() });
            }
            if length.is_some_and(|l| bytes.len() >= end + 4 + l) || read == 0 {
                return (stream, support::parse(&bytes));
            }
        }
    })
    .await
    .expect("the server answered in time")
}

async fn members(addr: SocketAddr, topic: &str) -> Vec<serde_json::Value> {
    let reply = get(addr, &format!("/v1/topics/{topic}/presence")).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["members"].as_array().unwrap().clone()
}

#[tokio::test]
async fn members_are_bounded_with_errors_that_say_what_was_wrong() {
    let running = support::server(ServerConfig::from_toml(CONFIG).unwrap()).await;
    let addr = running.local_addr();
    let info = "%7B%22name%22%3A%22Ann%22%7D"; // {"name":"Ann"}
    let (_first, reply) = open_stream(addr, &format!("/v1/topics/room/events?info={info}")).await;
    assert_eq!(reply.status, 200);
    let (_second, reply) = open_stream(addr, "/v1/topics/room/events").await;
    assert_eq!(reply.status, 200);
    let now = members(addr, "room").await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.iter().any(|m| m["info"] == serde_json::json!({"name": "Ann"})), "{now:?}");

    // A third member is one too many: refused, and the two stay.
    let (_third, reply) = open_stream(addr, "/v1/topics/room/events").await;
    assert_eq!(reply.status, 429, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.error_kind(), "rate_limited");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("max_members"));
    assert!(reply.header("retry-after").is_some());
    // So is a poll that would make one.
    let poll = get(addr, "/v1/topics/room/messages?client=c3").await;
    assert_eq!(poll.status, 429);
    assert_eq!(members(addr, "room").await.len(), 2);
    let stats = get(addr, "/v1/topics/room/presence/stats").await.json();
    assert_eq!((stats["members"].as_u64(), stats["users"].as_u64()), (Some(2), Some(2)));

    // Bad info and bad client ids, each with what was wrong.
    let long = format!("%22{}%22", "x".repeat(40));
    let cases = [
        (format!("/v1/topics/hall/events?info={long}"), 413, "max_info"),
        ("/v1/topics/hall/events?info=%7Bnot".to_owned(), 400, "not JSON"),
        ("/v1/topics/hall/messages?client=a%20b".to_owned(), 400, "printable ASCII"),
        (format!("/v1/topics/hall/messages?client={}", "c".repeat(65)), 400, "1 to 64"),
    ];
    for (path, status, says) in cases {
        let reply = get(addr, &path).await;
        assert_eq!(reply.status, status, "{path}: {}", String::from_utf8_lossy(&reply.body));
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{path}: {message}");
    }
    assert!(members(addr, "hall").await.is_empty(), "no bad request made a member");

    // A presence log is the server's to write, and has no presence of its own.
    let refused = post(addr, "/v1/topics/.presence:room", "", b"x").await;
    assert_eq!(refused.status, 403, "{}", String::from_utf8_lossy(&refused.body));
    let nested = get(addr, "/v1/topics/.presence:room/presence").await;
    assert_eq!(nested.status, 400, "{}", String::from_utf8_lossy(&nested.body));
    let joins = get(addr, "/v1/topics/.presence:room/messages?after=beginning").await.json();
    let events: Vec<&str> = joins["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["join", "join"], "two joins, nothing for the refused ones");
}

#[tokio::test]
async fn presence_off_for_a_family_or_a_server_makes_no_members_and_tells_nothing() {
    let running = support::server(ServerConfig::from_toml(CONFIG).unwrap()).await;
    let addr = running.local_addr();
    let (_stream, reply) = open_stream(addr, "/v1/topics/private:1/events").await;
    assert_eq!(reply.status, 200, "reading the topic still works");
    for path in [
        "/v1/topics/private:1/presence",
        "/v1/topics/private:1/presence/stats",
        "/v1/topics/.presence:private:1/messages",
    ] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 403, "{path}: {}", String::from_utf8_lossy(&reply.body));
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("presence is off") && message.contains("private:*"), "{message}");
    }

    let mut off = ServerConfig::from_toml(CONFIG).unwrap();
    off.presence.enabled = false;
    let running = support::server(off).await;
    let addr = running.local_addr();
    let (_stream, reply) = open_stream(addr, "/v1/topics/room/events").await;
    assert_eq!(reply.status, 200);
    let reply = get(addr, "/v1/topics/room/presence").await;
    assert_eq!(reply.status, 403);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("enabled = false"));
    let log = get(addr, "/v1/topics/.presence:room/messages?after=beginning").await.json();
    assert!(log["messages"].as_array().unwrap().is_empty(), "no member was made: {log}");
}
