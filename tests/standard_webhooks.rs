//! The Standard Webhooks reference implementation (the `standardwebhooks` package from PyPI)
//! verifies real deliveries from the server, before and after a key rotation.

mod support;

use pushpull::{Publication, Publish, ServerConfig, Topic};
use support::{LIMIT, post};
use tokio::io::{BufReader, Lines};
use tokio::process::ChildStdout;

async fn next(lines: &mut Lines<BufReader<ChildStdout>>) -> serde_json::Value {
    let line = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("the Python receiver reported in time")
        .expect("read its output")
        .expect("it is still running");
    serde_json::from_str(&line).expect("a JSON line")
}

#[tokio::test]
async fn the_reference_library_verifies_our_deliveries() {
    let mut config = ServerConfig::default();
    config
        .transports
        .configure::<pushpull::webhook::WebhookServer>(|c| c.allow_loopback = true)
        .unwrap();
    let broker = pushpull::broker(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_with(listener, broker.clone(), &config).unwrap();

    let secret = pushpull::webhook::wire::Secret::generate().to_string();
    let (_python, mut lines) =
        support::python("verify_receiver.py", "standardwebhooks", &[secret.as_str()]);
    let port = next(&mut lines).await["port"].as_u64().unwrap();

    let registration = serde_json::json!({
        "url": format!("http://127.0.0.1:{port}/hooks"),
        "topics": ["orders"],
        "secret": secret,
    });
    let reply = post(
        server.local_addr(),
        "/v1/webhooks",
        "Content-Type: application/json",
        registration.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    let topic = Topic::new("orders").unwrap();
    broker.publish(&topic, Publication::new("{\"order\":17}").event("created")).await.unwrap();
    broker.publish(&topic, Publication::new(vec![0xffu8, 0x00, 0x7f])).await.unwrap();
    let first = next(&mut lines).await;
    assert_eq!(first["verified"], true, "{first}");
    assert_eq!(first["payload"]["type"], "pushpull.message");
    assert_eq!(first["payload"]["data"]["data"], "{\"order\":17}");
    assert_eq!(first["payload"]["data"]["event"], "created");
    let second = next(&mut lines).await;
    assert_eq!(second["verified"], true, "{second}");
    assert_eq!(second["payload"]["data"]["data_base64"], "/wB/");

    // Rotate: deliveries carry the old and the new signature; the old key still verifies.
    let rotated = post(server.local_addr(), &format!("/v1/webhooks/{id}/rotate"), "", b"").await;
    assert_eq!(rotated.status, 200);
    assert_ne!(rotated.json()["secret"].as_str().unwrap(), secret);
    broker.publish(&topic, Publication::new("after rotation")).await.unwrap();
    let third = next(&mut lines).await;
    assert_eq!(third["verified"], true, "{third}");
    assert_eq!(third["signatures"], 2, "signed with both keys during the rotation");
}
