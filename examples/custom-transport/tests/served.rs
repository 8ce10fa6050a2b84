//! The line transport's server registered by name: a pushpull server serves it from
//! `[transports.line]`, on its own listener beside HTTP, over the same broker.

use custom_transport::{LineClient, LineTransport};
use pushpull::{
    ClientConfig, Cursor, ErrorKind, Fetch, Publication, Publish, Registry, ServerConfig, Topic,
};

fn registry() -> Registry {
    let mut registry = Registry::with_defaults();
    registry.register_client::<LineClient>().register_server::<LineTransport>();
    registry
}

#[tokio::test]
async fn the_facade_serves_a_registered_transport_from_its_section() {
    let registry = registry();
    let config = ServerConfig::from_toml_with(
        "listen = \"127.0.0.1:0\"\n[transports.line]\nlisten = \"127.0.0.1:0\"\n",
        &registry,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let broker = pushpull::broker(&config).unwrap();
    let server = registry.serve_with(listener, broker, &config).unwrap();
    let line = server.listener_addr("line").expect("the line listener runs");
    let http = format!("http://{}", server.local_addr());

    // Health lists it among the transports served, with its listener.
    let health: serde_json::Value =
        serde_json::from_str(&get(&format!("{http}/v1/health")).await).unwrap();
    assert!(health["transports"].as_array().unwrap().iter().any(|t| t == "line"), "{health}");
    assert_eq!(health["listeners"]["line"], line.to_string(), "{health}");

    // Published over the line, read over HTTP: one broker behind both.
    let client =
        registry.connect(&ClientConfig::new("line", format!("tcp://{line}"))).await.unwrap();
    let topic = Topic::new("served.line").unwrap();
    let receipt = client.publish(&topic, Publication::new("over the line")).await.unwrap();
    let poll = pushpull::connect(&ClientConfig::new("poll", http)).await.unwrap();
    let page = poll.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].payload, "over the line");
    assert_eq!(page.next, receipt.cursor());

    // Shutdown stops its listener too.
    server.shutdown().await;
    let refused = tokio::net::TcpStream::connect(line).await;
    assert!(refused.is_err(), "the line listener outlived the server");
}

#[tokio::test]
async fn its_section_is_checked_and_unknown_without_it() {
    let error =
        ServerConfig::from_toml_with("[transports.line]\nlisen = \"127.0.0.1:0\"\n", &registry())
            .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.message().contains("transports.line.lisen"), "{error}");
    // The default registry does not have it, and says which it has.
    let error =
        ServerConfig::from_toml("[transports.line]\nlisten = \"127.0.0.1:0\"\n").unwrap_err();
    assert!(error.message().contains("transports.line"), "{error}");
    assert!(error.message().contains("sse"), "{error}");
    // A router alone cannot serve a transport that listens by itself.
    let config =
        ServerConfig::from_toml_with("[transports.line]\nlisten = \"127.0.0.1:0\"\n", &registry())
            .unwrap();
    let broker = pushpull::broker(&config).unwrap();
    let error = registry().router(broker, &config).unwrap_err();
    assert!(error.message().contains("transports.line"), "{error}");
}

/// One GET over a plain TCP socket, its body as text.
async fn get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    socket.read_to_string(&mut reply).await.unwrap();
    reply.split_once("\r\n\r\n").unwrap().1.to_owned()
}
