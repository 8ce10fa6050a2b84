//! The closing handshake (RFC 6455 section 5.5.1), judged by a client this project did not
//! write (`websockets` from PyPI): whichever side closes, the other answers with a Close frame,
//! so the client sees a clean close with the code that was sent, not 1006.

mod support;

use pushpull::ServerConfig;
use support::{ClientLines, LIMIT, next_line};
use tokio::process::Child;

fn python_client(url: &str, mode: &str) -> (Child, ClientLines) {
    support::python("ws_close.py", "websockets", &[url, mode])
}

async fn subscribed(lines: &mut ClientLines) {
    let answer = next_line(lines, "answer", |l| l["type"] == "answer").await;
    assert_eq!(answer["answer"]["op"], "subscribed", "{answer}");
}

#[tokio::test]
async fn a_client_that_closes_gets_the_servers_close_frame() {
    let server = support::server(ServerConfig::default()).await;
    let url = format!("ws://{}/v1/ws", server.local_addr());
    let (mut python, mut lines) = python_client(&url, "client");
    subscribed(&mut lines).await;
    let closed = next_line(&mut lines, "closed", |l| l["type"] == "closed").await;
    assert_eq!(closed["sent"]["code"], 1000, "{closed}");
    assert_eq!(closed["received"]["code"], 1000, "the server answered the Close: {closed}");
    assert_eq!(closed["close_code"], 1000, "a clean close, not 1006: {closed}");
    let status = tokio::time::timeout(LIMIT, python.wait()).await.expect("exited").unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_server_that_closes_completes_the_handshake() {
    let server = support::server(ServerConfig::default()).await;
    let url = format!("ws://{}/v1/ws", server.local_addr());
    let (mut python, mut lines) = python_client(&url, "server");
    subscribed(&mut lines).await;
    // Graceful shutdown closes every socket with 1001 Going Away.
    let shutdown = tokio::spawn(server.shutdown());
    let closed = next_line(&mut lines, "closed", |l| l["type"] == "closed").await;
    assert_eq!(closed["received"]["code"], 1001, "{closed}");
    assert_eq!(closed["received"]["reason"], "the server is shutting down", "{closed}");
    assert_eq!(closed["sent"]["code"], 1001, "the client answered the Close: {closed}");
    assert_eq!(closed["close_code"], 1001, "a clean close, not 1006: {closed}");
    tokio::time::timeout(LIMIT, shutdown).await.expect("shut down in time").unwrap();
    let status = tokio::time::timeout(LIMIT, python.wait()).await.expect("exited").unwrap();
    assert!(status.success());
}
