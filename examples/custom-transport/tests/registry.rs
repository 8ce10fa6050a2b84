//! The line transport registered by name: an application switches to it in its client
//! configuration, with its own `[line]` settings section, and no code change.

use std::sync::Arc;

use custom_transport::{LineClient, LineServer};
use pushpull::{
    ClientConfig, Cursor, ErrorKind, Fetch, MemoryBroker, Publication, Publish, Registry, Topic,
};

#[tokio::test]
async fn a_registered_transport_is_picked_by_name_with_its_own_settings() {
    let broker = Arc::new(MemoryBroker::new());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = LineServer::spawn(listener, broker).unwrap();
    let mut registry = Registry::with_defaults();
    registry.register_client::<LineClient>();
    assert!(registry.names().contains(&"line"));

    let config = ClientConfig::from_toml(&format!(
        "transport = \"line\"\nurl = \"tcp://{}\"\n[line]\nrequest_timeout = \"5s\"\n",
        server.local_addr()
    ))
    .unwrap();
    let client = registry.connect(&config).await.unwrap();
    assert_eq!(client.capabilities().name, "line");
    let topic = Topic::new("registered").unwrap();
    let receipt = client.publish(&topic, Publication::new("over the line")).await.unwrap();
    let page = client.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages[0].payload, "over the line");
    assert_eq!(page.next, receipt.cursor());

    // Its section is checked like a built-in one's.
    let config =
        ClientConfig::from_toml("transport = \"line\"\n[line]\nrequest_timout = \"5s\"\n").unwrap();
    let error = registry.connect(&config).await.expect_err("a bad key");
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.message().contains("[line] request_timout"), "{error}");
    // Without registering it, the name is unknown.
    let error = Registry::with_defaults().connect(&config).await.expect_err("unknown");
    assert!(error.message().contains("line"), "{error}");
}
